"""Bad samples and shards in a stream: the error that names them, their records, and the counting handler.

Kept apart from :mod:`ser_lightning.data.stream.pipeline`: what a skip
is and how it travels to the model (the ``skipped`` list of each evaluation batch).
"""

from __future__ import annotations

import logging
import re

from ser_lightning.data.shards.storage import ShardReadError

log = logging.getLogger("ser_lightning.data.stream.pipeline")


class SampleDecodeError(ValueError):
    """A shard sample that cannot be turned into a decoded sample dict; names the sample key and the shard.

    Args:
        reason: what is wrong with the sample.
        key: the sample's ``__key__``.
        url: the shard it came from.
    """

    def __init__(self, reason: str, key: str | None = None, url: str | None = None) -> None:
        super().__init__(f"sample {key!r} of {url or '?'}: {reason}")
        self.reason, self.key, self.url = reason, key, url


class NullLabelError(SampleDecodeError):
    """A sample whose chosen label source is null (e.g. ``synthetic`` without a valid answer): skipped, not bad.

    Counted apart from decoding failures (it never ends a stream), logged as a count, and in evaluation
    recorded like any skip (``{"key", "shard", "reason"}``) so the pass still accounts for every sample.
    """


_STREAM_NAME = re.compile(r" @ <.*name='([^']*)'.*>$")  # webdataset appends " @ <its file object>" to tar errors


def skip_record(exn: BaseException) -> dict[str, str | None]:
    """``{"key", "shard", "reason"}`` of a skipped sample (``key`` ``None``: a shard-level error, e.g. a cut tar)."""
    if isinstance(exn, SampleDecodeError):
        return {"key": exn.key, "shard": exn.url, "reason": exn.reason}
    args = getattr(exn, "args", ())
    message = str(args[0]) if args else str(exn)
    shard = args[-1] if len(args) > 1 and isinstance(args[-1], str) else None  # tar_file_expander appends the url
    match = _STREAM_NAME.search(message)
    if match:
        shard = shard or match.group(1)
        message = message[: match.start()]
    return {"key": None, "shard": shard, "reason": f"{type(exn).__name__}: {message}"}


# webdataset's handlers (warn_and_continue ...) neither count skips nor stop a stream where nothing decodes
class SkipCounter:
    """A webdataset exception handler that logs, counts and skips bad samples or shards.

    Returns ``True`` (go on) for every exception, so one bad sample never ends a run; raises once
    ``max_consecutive`` failures happen without a decoded sample in between, so a stream where nothing
    decodes (wrong paths, a broken corpus) fails loudly instead of spinning forever. A sample whose label
    source is null (:class:`NullLabelError`) is counted in ``count`` and ``null`` but is no failure: it
    neither ends the stream nor gets a warning of its own.

    Args:
        max_consecutive: failures in a row that end the stream with a ``RuntimeError``.
        keep: keep a :func:`skip_record` of each failure until :meth:`drain` hands them out (evaluation).
    """

    def __init__(self, max_consecutive: float = 1000, keep: bool = False) -> None:
        self.max_consecutive = max_consecutive
        self.keep = keep
        self.count = 0
        self.null = 0  # of them, samples whose label source is null (NullLabelError)
        self.consecutive = 0
        self.records: list[dict[str, str | None]] = []

    def __call__(self, exn: BaseException) -> bool:
        """Log and count ``exn``; ``True``: the pipeline continues (a shard unreadable after retries raises)."""
        if isinstance(exn, ShardReadError):
            raise exn  # a network failure is no damaged shard: never a silently shorter epoch or evaluation
        self.count += 1
        if self.keep:
            self.records.append(skip_record(exn))
        if isinstance(exn, NullLabelError):  # expected, not a failure: counted, logged at 1, 10, 100 ...
            self.null += 1
            if self.null == 10 ** (len(str(self.null)) - 1):
                log.info("skipped %d samples whose label source is null in this worker (%s)", self.null, exn.reason)
            return True
        self.consecutive += 1
        log.warning("skipped a bad sample or shard (%d skipped in this worker): %s", self.count, exn)
        if self.consecutive >= self.max_consecutive:
            raise RuntimeError(f"{self.consecutive} bad samples or shards in a row; last error: {exn}") from exn
        return True

    def ok(self) -> None:
        """Note a successfully decoded sample."""
        self.consecutive = 0

    def drain(self) -> list[dict[str, str | None]]:
        """The kept records of the failures since the last call."""
        records, self.records = self.records, []
        return records
