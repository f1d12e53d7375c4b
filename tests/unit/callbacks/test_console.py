"""The CLI silences exactly the harmless messages it knows, and its progress bar shows no ``v_num``."""

from __future__ import annotations

import logging
import warnings
from types import SimpleNamespace

import pytest
from lightning.pytorch.callbacks import LearningRateMonitor, RichProgressBar, TQDMProgressBar
from lightning.pytorch.utilities.warnings import PossibleUserWarning

from ser_lightning.callbacks.console import (
    QuietRichProgressBar,
    QuietTQDMProgressBar,
    add_default_progress_bar,
    silence_known_warnings,
)

# the messages as the libraries word them (torch, Lightning), with the category they use
SILENCED = [
    ("`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec)` instead.", FutureWarning),
    ("Your `IterableDataset` has `__len__` defined. In combination with multi-process data loading", UserWarning),
    ("Found 12 module(s) in eval mode at the start of training. This may lead to", PossibleUserWarning),
    ("Support for mismatched key_padding_mask and attn_mask is deprecated. Use same type for both.", UserWarning),
    ("Couldn't infer the batch indices fetched from your dataloader: `DataLoader`", UserWarning),
]
SHOWN = [
    ("The number of training batches (2) is smaller than the logging interval", UserWarning),
    ("Your `IterableDataset` has `__len__` defined.", DeprecationWarning),  # same text, another category
    ("Something about eval mode that nobody has looked at", UserWarning),
]


def test_known_warnings_are_silenced_and_others_are_not():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        silence_known_warnings()
        for message, category in SILENCED + SHOWN:
            warnings.warn(message, category, stacklevel=1)
    assert [str(w.message) for w in caught] == [m for m, _ in SHOWN]


def test_the_litlogger_tip_is_dropped_and_other_lines_pass():
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    logger.addHandler(handler)
    try:
        silence_known_warnings()
        silence_known_warnings()  # idempotent
        logger.warning("💡 Tip: For seamless cloud logging, try installing [litlogger](https://pypi.org/project/litlogger/)")
        logger.warning("GPU available: False, used: False")
    finally:
        logger.removeHandler(handler)
    assert seen == ["GPU available: False, used: False"]


@pytest.mark.parametrize("bar_class", [QuietTQDMProgressBar, QuietRichProgressBar])
def test_progress_bar_metrics_leave_out_v_num(bar_class):
    trainer = SimpleNamespace(loggers=[SimpleNamespace(version=0)], progress_bar_metrics={"train/loss": 0.5})
    plain = {QuietTQDMProgressBar: TQDMProgressBar, QuietRichProgressBar: RichProgressBar}[bar_class]()
    assert plain.get_metrics(trainer, None) == {"v_num": 0, "train/loss": 0.5}  # what Lightning shows
    assert bar_class().get_metrics(trainer, None) == {"train/loss": 0.5}


def test_the_default_bar_is_added_only_when_wanted():
    monitor = LearningRateMonitor()
    added = add_default_progress_bar({"callbacks": [monitor]})
    assert added[0] is monitor
    assert isinstance(added[1], (QuietRichProgressBar, QuietTQDMProgressBar))
    assert add_default_progress_bar({"enable_progress_bar": False}) is None  # Lightning refuses a bar then
    assert add_default_progress_bar({"callbacks": [TQDMProgressBar()]}) is None  # the config's own bar
    assert len(add_default_progress_bar({"callbacks": None, "enable_progress_bar": None})) == 1
