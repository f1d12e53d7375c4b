"""``train.py fit --model.init_args.lr 1e6`` stops loudly, keeping no NaN "best" checkpoint.

The CLI runs in-process as in test_cli_configs.py: ``main`` raising is what ``python train.py`` turns into a
non-zero exit status (a traceback and status 1).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cli_fixtures import TINY_DEMO

from ser_lightning.callbacks.guards import NonFiniteError
from ser_lightning.cli.train import main
from ser_lightning.data.shards import iter_shard_meta

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::UserWarning")]

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = TINY_DEMO


def _args(tmp_path: Path) -> list[str]:
    return [
        "fit",
        *CONFIGS,
        "--model.init_args.lr",
        "1e6",
        "--trainer.logger.init_args.save_dir",
        str(tmp_path),
        "--trainer.logger.init_args.version",
        "v",
        "--trainer.default_root_dir",
        str(tmp_path),
        "--data.shards",
        str(ROOT / "shards" / "demo"),
        "--test_after_fit",
        "true",
    ]


def _files(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.rglob("*") if p.suffix in (".ckpt", ".json"))


def test_diverging_run_stops_naming_step_and_ids(tmp_path):
    with pytest.raises(NonFiniteError, match=r"non-finite loss nan .*at global step 1 ") as error:
        main(_args(tmp_path))
    listed = re.search(r"utterance ids \[(.*)\]", str(error.value))
    assert listed
    ids = listed.group(1).split(", ")
    assert ids
    assert set(ids) <= {m["id"] for m in iter_shard_meta(ROOT / "shards" / "demo", "train")}
    assert _files(tmp_path) == []  # stopped before any validation: no checkpoint, no metrics


def test_skipped_steps_still_never_make_a_nan_checkpoint_best(tmp_path):
    """Under ``skip`` the run reaches validation with diverged weights: ``val/js`` is NaN, so nothing is tested."""
    args = [*_args(tmp_path), "--nonfinite.policy", "skip", "--nonfinite.max_skipped", "5"]
    with pytest.raises(NonFiniteError, match=r"'val/js' was never finite \(nan at epoch 0.*last\.ckpt"):
        main(args)
    assert _files(tmp_path) == ["last.ckpt"]  # no best-epoch00-jsnan.ckpt, no test_metrics.json


def test_skip_policy_stops_past_its_cap(tmp_path):
    args = [*_args(tmp_path), "--nonfinite.policy", "skip", "--nonfinite.max_skipped", "0"]
    with pytest.raises(NonFiniteError, match=r"global step 1 .*1 non-finite steps skipped, more than max_skipped=0"):
        main(args)
