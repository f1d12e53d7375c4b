"""Where shard directories live: a local folder, or a prefix in object storage or on a web server, via fsspec.

``--data.shards`` (and ``ser-stats``, ``ser-index``, ``ser-experiment``, ``refresh_card``) takes a local path or a
URL: ``s3://bucket/prefix`` (s3fs, the ``cloud`` extra; the standard ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN`` / ``AWS_PROFILE`` credentials and ``AWS_ENDPOINT_URL`` for another
S3-compatible store), ``gs://bucket/prefix`` (gcsfs, ``GOOGLE_APPLICATION_CREDENTIALS``) and
``http(s)://host/prefix``. Local paths stay :class:`~pathlib.Path` objects; a URL stays a string.

Every remote read goes through :class:`RetryingReader`: a failed or cut connection is retried with exponential
back-off (:class:`RetryPolicy`) and the stream resumes at the byte it stopped at (a seek where the store serves
ranges, else by reading up to it again); after the last try :class:`ShardReadError` names the file, the offset and
the error. A shard is never silently shorter: a stream that ends before the file's size is a failure too. Readers
count the bytes they deliver into a :class:`ByteCounter` (the egress an evaluation reports).
"""

from __future__ import annotations

import io
import logging
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

log = logging.getLogger(__name__)

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
Location = str | Path
# errors that retrying cannot mend: the file is not there, or not ours to read
PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
READ_BLOCK = 8 << 20  # bytes per ranged request of object stores (sequential tar reads)


def is_remote(location: Location) -> bool:
    """Whether ``location`` is a URL (``s3://``, ``gs://``, ``http(s)://``, ...) rather than a local path."""
    text = str(location)
    return bool(_URL.match(text)) and not text.startswith("file://")


def as_location(location: Location) -> Location:
    """A local path as :class:`Path`, a URL as a string without a trailing slash."""
    if isinstance(location, Path) or not is_remote(location):
        return Path(str(location).removeprefix("file://"))
    return str(location).rstrip("/")


def join(location: Location, *names: str) -> Location:
    """``location / name / ...``: a :class:`Path` for a local folder, a URL string for a remote prefix."""
    location = as_location(location)
    if isinstance(location, Path):
        return location.joinpath(*names)
    return "/".join([location, *(n.strip("/") for n in names)])


def basename(location: Location) -> str:
    """The last component of a path or URL (``train-000000.tar``)."""
    return str(location).rstrip("/").rsplit("/", 1)[-1]


def _filesystem(url: str) -> tuple[Any, str]:
    """The fsspec file system and path of a URL, with timeouts so a silent server fails instead of hanging."""
    import fsspec

    options: dict[str, Any] = {}
    if url.startswith(("http://", "https://")):
        import aiohttp

        options["client_kwargs"] = {"timeout": aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=60)}
    elif url.startswith("s3://"):
        options["config_kwargs"] = {"connect_timeout": 30, "read_timeout": 60}
    try:
        return fsspec.core.url_to_fs(url, **options)
    except ImportError as err:
        scheme = url.split("://", 1)[0]
        raise ImportError(
            f"{url}: reading {scheme}:// needs {err.name or 'its fsspec backend'}: "
            "pip install -c constraints.txt -e '.[cloud]' (s3fs, gcsfs)"
        ) from err


def exists(location: Location) -> bool:
    """Whether the file exists (a HEAD request for a URL)."""
    location = as_location(location)
    if isinstance(location, Path):
        return location.is_file()
    fs, path = _filesystem(location)
    return _retry(lambda: bool(fs.exists(path)), location)


def size(location: Location) -> int:
    """The file's size in bytes."""
    location = as_location(location)
    if isinstance(location, Path):
        return location.stat().st_size
    fs, path = _filesystem(location)
    return _retry(lambda: int(fs.size(path)), location)


def read_bytes(location: Location, policy: RetryPolicy | None = None) -> bytes:
    """The whole file (retried for a URL)."""
    location = as_location(location)
    if isinstance(location, Path):
        return location.read_bytes()
    with open_binary(location, policy) as f:
        return f.read()


def read_text(location: Location) -> str:
    """The whole file as UTF-8 text."""
    return read_bytes(location).decode("utf-8")


def write_bytes(location: Location, data: bytes) -> None:
    """Write ``data`` to the file: locally through a temporary file and a rename, remotely in one upload."""
    location = as_location(location)
    if isinstance(location, Path):
        tmp = location.with_name(f".{location.name}.tmp")
        tmp.write_bytes(data)
        tmp.replace(location)
        return
    fs, path = _filesystem(location)
    _retry(lambda: fs.pipe_file(path, data), location)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a remote read is tried again: ``attempts`` tries in all, the waits doubling.

    Args:
        attempts: tries in all (1: no retry).
        first_delay: seconds before the second try.
        max_delay: the longest wait between tries.
    """

    attempts: int = 6
    first_delay: float = 0.5
    max_delay: float = 8.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.first_delay < 0 or self.max_delay < 0:
            raise ValueError(f"a retry policy needs attempts >= 1 and delays >= 0, got {self}")

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed try ``attempt`` (1-based), with a little jitter."""
        return min(self.max_delay, self.first_delay * 2 ** (attempt - 1)) * (1 + 0.1 * random.random())


DEFAULT_POLICY = RetryPolicy()


class ShardReadError(OSError):
    """A remote file that could not be read after every retry; names the file, the offset and the last error."""

    def __init__(self, location: Location, offset: int, attempts: int, error: BaseException) -> None:
        super().__init__(
            f"{location}: read failed at byte {offset} after {attempts} tries ({type(error).__name__}: {error})"
        )
        self.location, self.offset, self.attempts = str(location), offset, attempts


class ByteCounter:
    """Bytes read from shard files, by the readers that share it (one per stream of a worker)."""

    def __init__(self) -> None:
        self.bytes = 0

    def add(self, count: int) -> None:
        """Count ``count`` bytes read."""
        self.bytes += count

    def drain(self) -> int:
        """The bytes counted since the last call."""
        count, self.bytes = self.bytes, 0
        return count


def _transient(error: BaseException) -> bool:
    return isinstance(error, Exception) and not isinstance(error, PERMANENT + (ShardReadError,))


def _retry(call: Callable[[], Any], location: Location, policy: RetryPolicy = DEFAULT_POLICY) -> Any:
    """``call()``, tried again on a transient error; :class:`ShardReadError` after the last try."""
    for attempt in range(1, policy.attempts + 1):
        try:
            return call()
        except Exception as err:
            if not _transient(err):
                raise
            if attempt == policy.attempts:
                raise ShardReadError(location, 0, attempt, err) from err
            log.warning("%s: %s (try %d of %d), retrying", location, err, attempt, policy.attempts)
            time.sleep(policy.delay(attempt))
    raise AssertionError("unreachable")


class RetryingReader(io.RawIOBase):
    """A sequential binary stream of a remote file that survives cut connections (see the module docstring).

    Args:
        url: the file.
        policy: the retries.
        counter: where delivered bytes are counted.
    """

    def __init__(self, url: str, policy: RetryPolicy = DEFAULT_POLICY, counter: ByteCounter | None = None) -> None:
        super().__init__()
        self.url = url
        self.name = url  # shown in the repr of the buffered reader around it, which names the shard in errors
        self.policy = policy
        self.counter = counter
        self.position = 0
        self.retries = 0
        self._fs, self._path = _filesystem(url)
        self.size = _retry(lambda: int(self._fs.size(self._path)), url, policy)
        self._file: Any = None
        self._open_at(0)

    def _open(self) -> Any:
        streaming = self.url.startswith(("http://", "https://"))  # one GET, no ranges needed
        return self._fs.open(self._path, "rb", block_size=0 if streaming else READ_BLOCK)

    def _open_at(self, offset: int) -> None:
        """Open the file positioned at ``offset``: a seek where the store serves ranges, else read up to it."""
        self._file = self._open()
        if not offset:
            return
        try:
            self._file.seek(offset)
            return
        except (ValueError, OSError, NotImplementedError):
            pass  # a stream without ranges: read up to the offset again
        left = offset
        while left:
            chunk = self._file.read(min(left, 1 << 20))
            if not chunk:
                raise ConnectionError(f"the stream ended at byte {offset - left} while resuming at {offset}")
            left -= len(chunk)

    def _drop_file(self) -> None:
        """Let go of a broken stream (it may not even close cleanly); the next read opens a new one."""
        file, self._file = self._file, None
        if file is not None:
            try:
                file.close()
            except Exception:
                log.debug("%s: closing the broken stream failed", self.url, exc_info=True)

    def readable(self) -> bool:
        """Always: a read-only stream."""
        return True

    def readinto(self, buffer: Any) -> int:
        """Fill ``buffer`` from the current position; retried and resumed on a transient failure."""
        want = len(buffer)
        if want == 0 or self.position >= self.size:
            return 0
        for attempt in range(1, self.policy.attempts + 1):
            try:
                if self._file is None:
                    self._open_at(self.position)
                data = self._file.read(min(want, self.size - self.position))
                if not data:
                    raise ConnectionError(f"the stream ended at byte {self.position} of {self.size}")
                buffer[: len(data)] = data
                self.position += len(data)
                if self.counter is not None:
                    self.counter.add(len(data))
                return len(data)
            except Exception as err:
                if not _transient(err):
                    raise
                self._drop_file()
                if attempt == self.policy.attempts:
                    raise ShardReadError(self.url, self.position, attempt, err) from err
                self.retries += 1
                log.warning("%s: %s at byte %d (try %d of %d), resuming", self.url, err, self.position, attempt,
                            self.policy.attempts)  # fmt: skip
                time.sleep(self.policy.delay(attempt))
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Close the underlying stream."""
        if self._file is not None:
            file, self._file = self._file, None
            file.close()
        super().close()


class _CountingReader(io.RawIOBase):
    """A local file whose reads are counted (the same egress report for local and remote shards)."""

    def __init__(self, path: Path, counter: ByteCounter | None) -> None:
        super().__init__()
        self._file = path.open("rb")
        self.name = str(path)  # shown in the repr of the buffered reader around it, which names the shard in errors
        self.counter = counter

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._file.readinto(buffer)
        if self.counter is not None and n:
            self.counter.add(n)
        return n

    def close(self) -> None:
        self._file.close()
        super().close()


def open_binary(
    location: Location, policy: RetryPolicy | None = None, counter: ByteCounter | None = None
) -> BinaryIO:
    """A buffered binary reader of the file: local, or remote through :class:`RetryingReader`."""
    location = as_location(location)
    if isinstance(location, Path):
        raw: io.RawIOBase = _CountingReader(location, counter)
    else:
        raw = RetryingReader(location, policy or DEFAULT_POLICY, counter)
    return io.BufferedReader(raw, buffer_size=1 << 20)  # type: ignore[return-value]
