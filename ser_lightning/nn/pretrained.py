"""Load a pretrained part from the Hugging Face Hub or a local directory, failing with one readable line.

Offline, a hub id missing from the cache makes ``transformers`` raise an ``OSError`` several exceptions deep,
which jsonargparse then buries in a dump of the whole config. :func:`pretrained` turns such failures into a
:class:`PretrainedNotFound` that says which model could not be loaded and how to pass a local directory;
``train.py`` prints just that line and exits with status 2.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

OFFLINE = "no network here and not in the Hugging Face cache"


class PretrainedNotFound(RuntimeError):
    """A pretrained model, tokenizer or processor that could not be loaded from its hub id or directory.

    Attributes:
        source: the hub id or path that was asked for.
        what: which part it was meant to be (``"text encoder"``), for the message.
        reason: why it failed, in a few words.
        key: the config key that names ``source`` (``model.init_args.text_encoder.init_args.model``), if known.
    """

    def __init__(self, source: str, what: str, reason: str, key: str | None = None) -> None:
        self.source, self.what, self.reason, self.key = source, what, reason, key
        hint = f"instead, e.g. --{key} /path/to/model" if key else "holding the model"
        super().__init__(f"could not load {source!r} ({what}): {reason}; pass a local directory {hint}")

    def with_key(self, key: str | None) -> PretrainedNotFound:
        """The same error, naming the config key that set ``source``."""
        return PretrainedNotFound(self.source, self.what, self.reason, key)


def pretrained(loader: Callable[..., T], source: str | Path, *args: Any, what: str, **kwargs: Any) -> T:
    """``loader(source, *args, **kwargs)`` (a ``from_pretrained``), raising :class:`PretrainedNotFound` on a miss.

    A miss is an ``OSError`` (what ``transformers`` raises for an id neither reachable nor cached, or a path
    that is no directory), an invalid hub id, or a ``ValueError`` from a local directory without a usable model.
    """
    try:
        return loader(str(source), *args, **kwargs)
    except (OSError, ValueError) as exc:
        if isinstance(exc, ValueError) and not _is_hub_error(exc) and not Path(source).expanduser().is_dir():
            raise  # a bad argument, not a missing model
        raise PretrainedNotFound(str(source), what, _reason(exc, str(source))) from exc


def pretrained_error(exc: BaseException | None) -> PretrainedNotFound | None:
    """The :class:`PretrainedNotFound` in ``exc``'s ``__cause__`` / ``__context__`` chain (jsonargparse wraps it)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, PretrainedNotFound):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _chain(exc: BaseException) -> list[BaseException]:
    found: list[BaseException] = []
    while exc is not None and exc not in found:
        found.append(exc)
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return found


def _is_hub_error(exc: BaseException) -> bool:
    return any(type(e).__module__.startswith("huggingface_hub") for e in _chain(exc))


def _reason(exc: BaseException, source: str) -> str:
    """A few words on why ``source`` did not load, from the exception chain's types."""
    names = {type(e).__name__ for e in _chain(exc)}
    if names & {"LocalEntryNotFoundError", "OfflineModeIsEnabled"}:
        return OFFLINE
    if names & {"GatedRepoError"}:
        return "a gated model on the Hugging Face Hub (log in and accept its terms, or use a local copy)"
    if names & {"RepositoryNotFoundError"}:
        return "no such model on the Hugging Face Hub"
    if "HFValidationError" in names:
        path = Path(source).expanduser()
        looks_like_path = path.is_absolute() or source.startswith((".", "~")) or source.count("/") > 1
        return "no such directory" if looks_like_path else "not a Hugging Face Hub id"
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return first if len(first) <= 160 else first[:157] + "..."
