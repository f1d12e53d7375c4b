"""Old module paths that configs, checkpoints and scripts name keep resolving to the modules' new homes."""

from __future__ import annotations

import importlib
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from ser_lightning._moved import MOVED

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("old", "new"), sorted(MOVED.items()))
def test_an_old_module_path_is_the_new_module(old: str, new: str) -> None:
    assert importlib.import_module(old) is importlib.import_module(new)
    module = sys.modules[new]
    assert module.__name__ == new
    assert module.__spec__.name == new  # the alias does not rename the module


def test_no_old_path_is_also_a_file() -> None:
    for old in MOVED:
        path = ROOT / Path(*old.split("."))
        assert not path.with_suffix(".py").exists(), f"{old} exists again: drop it from MOVED"
        assert not path.is_dir(), f"{old} exists again: drop it from MOVED"


def test_classes_keep_their_identity_through_an_old_path() -> None:
    from ser_lightning.callbacks.curriculum import EntropyCurriculum
    from ser_lightning.data.dime.mixer import DimeMixer

    old_mixer = importlib.import_module("ser_lightning.data.dime_mixer").DimeMixer
    assert old_mixer is DimeMixer
    assert pickle.loads(pickle.dumps(EntropyCurriculum)) is EntropyCurriculum


def test_a_config_naming_old_class_paths_still_parses(tmp_path: Path) -> None:
    overlay = tmp_path / "old.yaml"
    overlay.write_text(
        "trainer:\n"
        "  callbacks:\n"
        "    - class_path: ser_lightning.models.curriculum.EntropyCurriculum\n"
        "      init_args: {warmup_epochs: 2}\n"
    )
    out = subprocess.run(
        [sys.executable, "train.py", "fit", "--config", "configs/wavlm_multitask.yaml", "--config", str(overlay),
         "--print_config"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert "EntropyCurriculum" in out.stdout
    assert "warmup_epochs: 2" in out.stdout
