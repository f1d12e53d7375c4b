"""Keep the CLI's console to what needs reading: known harmless warnings off, no ``v_num`` in the progress bar.

Each silenced message is matched by its own text (never a whole category), as pyproject's pytest
``filterwarnings`` does for the test suite, so a new warning of the same kind still shows.
"""

from __future__ import annotations

import logging
import re
import warnings
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from lightning.pytorch.callbacks.progress import ProgressBar

# (message regex, matched at the start of the message; category) -- and why each is harmless
KNOWN_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    # torch >= 2.9 deprecates LeafSpec; Lightning's own pytree helper still builds one
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
    # the streams know their per-rank length exactly (split by node, then worker, in data/)
    (r"Your `IterableDataset` has `__len__` defined", UserWarning),
    # frozen pretrained encoders are kept in eval mode on purpose (no dropout in a frozen part)
    (r"Found \d+ module\(s\) in eval mode at the start of training", UserWarning),
    # transformers' BERT / WavLM attention passes a bool padding mask next to a float attention mask
    (r"Support for mismatched key_padding_mask and attn_mask is deprecated", UserWarning),
    # predict: our streamed batches carry their utterance ids; PredictionWriter does not use batch indices
    (r"Couldn't infer the batch indices fetched from your dataloader", UserWarning),
    # DDP: val/ and test/ metrics come from torchmetrics' compute(), already synchronised across ranks
    (r"It is recommended to use `self\.log\('(val|test)/", UserWarning),
    # a machine with Slurm installed (a login node, CI): runs outside a job need no srun; the sbatch templates use it
    (r"The `srun` command is available on your system but is not used", UserWarning),
)
# log records dropped (message regex, searched): Lightning's advertisement when no LitLogger is configured
KNOWN_LOG_MESSAGES: tuple[str, ...] = (r"Tip: .*\blitlogger\b",)
RANK_ZERO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


class _DropMessages(logging.Filter):
    """Drops log records whose message matches one of ``patterns``."""

    def __init__(self, patterns: tuple[str, ...]) -> None:
        super().__init__()
        self.patterns = [re.compile(p) for p in patterns]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(p.search(message) for p in self.patterns)


def silence_known_warnings() -> None:
    """Ignore :data:`KNOWN_WARNINGS` and drop :data:`KNOWN_LOG_MESSAGES` in this process (idempotent)."""
    for message, category in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name in RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(KNOWN_LOG_MESSAGES))


class _WithoutVersion:
    """Progress-bar mixin: leave out ``v_num``, the logger version (``0.000`` for a string version)."""

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)  # type: ignore[misc]
        metrics.pop("v_num", None)
        return metrics


class QuietTQDMProgressBar(_WithoutVersion, TQDMProgressBar):
    """Lightning's ``TQDMProgressBar`` without ``v_num``."""


class QuietRichProgressBar(_WithoutVersion, RichProgressBar):
    """Lightning's ``RichProgressBar`` without ``v_num``."""


def default_progress_bar() -> ProgressBar:
    """The bar Lightning would pick (Rich when installed, else tqdm), without ``v_num``."""
    try:
        return QuietRichProgressBar()
    except ModuleNotFoundError:  # RichProgressBar refuses to start without `rich`
        return QuietTQDMProgressBar()


def add_default_progress_bar(trainer_config: dict[str, Any]) -> list[Any] | None:
    """``trainer_config``'s callbacks plus :func:`default_progress_bar`, or ``None`` when none is wanted.

    ``None`` when the bar is switched off (``enable_progress_bar: false``; Lightning refuses a bar callback then)
    or the config already has a progress bar callback.
    """
    if trainer_config.get("enable_progress_bar") is False:
        return None
    callbacks = trainer_config.get("callbacks") or []
    callbacks = list(callbacks) if isinstance(callbacks, list) else [callbacks]
    if any(isinstance(c, ProgressBar) for c in callbacks):
        return None
    return [*callbacks, default_progress_bar()]
