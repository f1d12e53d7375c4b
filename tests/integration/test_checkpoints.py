"""Lean, self-describing checkpoints through the real CLI: a short demo fit with the frozen MiniLM text encoder.

The checkpoint leaves the MiniLM weights out (source + fingerprint instead), rebuilds to the trained module's
predictions with ``restore_model`` (no config, no shards), refuses a rebuilt part that differs, and still resumes
(``fit --ckpt_path last``) and tests ``best`` (``test_after_fit``). Qwen2-Audio: adapters + head only, restored
with ``backbone=`` a copy of the base.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from qwen2_fixtures import tiny_qwen2_audio_dir  # noqa: F401 (the session fixture)
from transformers import AutoModel, AutoTokenizer

from ser_lightning.cli.train import main
from ser_lightning.data.stream.datamodule import SERDataModule
from ser_lightning.nn.text import minilm_path
from ser_lightning.runs.checkpoint import CHECKPOINT_KEY, checkpoint_info, restore_model

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SHARDS = ROOT / "shards" / "demo"
# the demo's frozen MiniLM, a tiny random audio encoder (no tiny_text overlay: the text encoder stays pretrained)
DEMO = ["configs/demo.yaml", "configs/debug/tiny.yaml"]
QWEN = ["configs/qwen2_audio_lora.yaml", "configs/debug/tiny_qwen2_audio.yaml"]


def _args(configs: list[str], save_dir: Path, name: str, *extra: str) -> list[str]:
    return [
        *[arg for c in configs for arg in ("--config", str(ROOT / c))],
        f"--data.shards={SHARDS}",
        f"--trainer.logger.init_args.save_dir={save_dir}",
        f"--trainer.logger.init_args.name={name}",
        *extra,
    ]


def _tested(save_dir: Path) -> dict[str, list[float]]:
    """The rows of ``test_predictions.jsonl`` that ``test_after_fit`` wrote with the best checkpoint loaded."""
    files = sorted(save_dir.rglob("test_predictions.jsonl"))
    assert len(files) == 1, files
    rows = [json.loads(line) for line in files[0].read_text().splitlines()]
    return {row["id"]: row["probabilities"] for row in rows}


def _restored_predictions(model: Any, ckpt: Path, batches: int) -> dict[str, list[float]]:
    """The restored model's rows on the first ``batches`` of the test split (the run's own DataModule settings)."""
    hparams = torch.load(ckpt, map_location="cpu", weights_only=False)["datamodule_hyper_parameters"]
    settings = {k: v for k, v in hparams.items() if not k.startswith("_")}  # jsonargparse's _instantiator
    datamodule = SERDataModule(**{**settings, "shards": str(SHARDS)})
    datamodule.connect(**model.data_requirements())
    datamodule.setup("predict")
    rows: dict[str, list[float]] = {}
    with torch.no_grad():
        for i, batch in enumerate(datamodule.predict_dataloader()):
            if i == batches:
                break
            rows.update({r["id"]: r["probabilities"] for r in model.predict_step(batch, i)})
    return rows


def _assert_same(actual: dict[str, list[float]], expected: dict[str, list[float]], atol: float) -> None:
    """The same ids (the writer sorts its rows) with the same probabilities."""
    assert expected
    ids = sorted(expected)
    assert sorted(actual) == ids
    torch.testing.assert_close(torch.tensor([actual[i] for i in ids]), torch.tensor([expected[i] for i in ids]),
                               atol=atol, rtol=0)  # fmt: skip


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-epoch demo fit (2 batches) that then tests its best checkpoint; returns the save directory."""
    save_dir = tmp_path_factory.mktemp("lean")
    main(["fit", *_args(DEMO, save_dir, "lean", "--test_after_fit=true", "--trainer.limit_val_batches=1")])
    return save_dir


def _ckpt(save_dir: Path, name: str = "last.ckpt") -> Path:
    return next(save_dir.rglob(f"checkpoints/{name}"))


def _tampered(ckpt: Path, tmp_path: Path, change: Any) -> Path:
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=False)
    change(checkpoint)
    out = tmp_path / "tampered.ckpt"
    torch.save(checkpoint, out)
    return out


def test_lean_checkpoint_lacks_the_frozen_text_encoder_but_has_its_fingerprint(demo_run: Path) -> None:
    ckpt = _ckpt(demo_run)
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=False)
    keys = list(checkpoint["state_dict"])
    assert not [k for k in keys if k.startswith("text_encoder.")]
    assert [k for k in keys if k.startswith("audio_encoder.model.")], "the random audio encoder must stay in"
    minilm = AutoModel.from_pretrained(minilm_path())
    used = [n for n, _ in minilm.named_parameters() if not n.startswith("pooler.")]  # the encoder drops the pooler
    info = checkpoint_info(ckpt)
    part = info["lean"]["text_encoder.model"]
    assert part["source"] == "minilm"
    assert part["fingerprint"]["tensors"] == len(used)
    assert part["fingerprint"]["numel"] == sum(p.numel() for n, p in minilm.named_parameters() if n in used)
    card = json.loads((SHARDS / "card.json").read_text())
    assert info["classes"] == card["classes"]
    assert info["num_classes"] == len(card["classes"])
    assert info["sample_rate"] == 16000
    assert info["label_source"] == "primary"
    assert info["data"]["max_text_length"] == 64
    assert info["data"]["crop_seconds"] is None
    model_args = info["model"]["init_args"]
    assert info["model"]["class_path"] == "ser_lightning.models.AmbER2"
    assert model_args["classes"] == card["classes"]
    assert model_args["bin_edges"] == info["bin_edges"]
    assert model_args["text_encoder"]["init_args"]["model"] == "minilm"
    assert (next(demo_run.rglob("test_metrics.json"))).is_file()  # test_after_fit loaded `best` (lean) and tested


def test_restore_model_gives_the_trained_modules_predictions(demo_run: Path) -> None:
    ckpt = next(demo_run.rglob("checkpoints/best-*.ckpt"))
    model = restore_model(ckpt)  # no config, no shards
    assert not model.training
    _assert_same(_restored_predictions(model, ckpt, batches=2), _tested(demo_run), atol=1e-6)


def test_a_changed_fingerprint_or_another_source_is_refused(demo_run: Path, tmp_path: Path) -> None:
    ckpt = _ckpt(demo_run)

    def shift_sum(checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_KEY]["lean"]["text_encoder.model"]["fingerprint"]["sum"] += 1e-3

    with pytest.raises(ValueError, match=r"'text_encoder.model'.*'minilm'"):
        restore_model(_tampered(ckpt, tmp_path, shift_sum))

    other = tmp_path / "other-minilm"  # a MiniLM fine-tuned elsewhere: same layout, other weights
    model = AutoModel.from_pretrained(minilm_path())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1e-3)
    model.save_pretrained(other)
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(other)

    def other_source(checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_KEY]["model"]["init_args"]["text_encoder"]["init_args"]["model"] = str(other)

    with pytest.raises(ValueError, match=rf"'text_encoder.model'.*{other.name}.*fingerprint differs"):
        restore_model(_tampered(ckpt, tmp_path, other_source))

    def random_text(checkpoint: dict) -> None:
        args = checkpoint[CHECKPOINT_KEY]["model"]["init_args"]["text_encoder"]["init_args"]
        args.update(model=None, config={"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1,
                                        "num_attention_heads": 2, "intermediate_size": 37})  # fmt: skip

    with pytest.raises(ValueError, match=r"left out 'text_encoder.model'.*does not"):
        restore_model(_tampered(ckpt, tmp_path, random_text))

    def drop_head(checkpoint: dict) -> None:
        del checkpoint["state_dict"][next(k for k in checkpoint["state_dict"] if k.startswith("heads.fusion."))]

    with pytest.raises(KeyError, match="lacks 1 trained parameters"):
        restore_model(_tampered(ckpt, tmp_path, drop_head))


def test_fit_resumes_from_a_lean_last_checkpoint(demo_run: Path, tmp_path: Path) -> None:
    save_dir = tmp_path / "copy"
    shutil.copytree(demo_run, save_dir)
    main(["fit", *_args(DEMO, save_dir, "lean", "--ckpt_path=last", "--trainer.max_epochs=2",
                        "--trainer.limit_val_batches=1")])  # fmt: skip
    # the newest checkpoint (the copy's last.ckpt keeps its name: the callback state names the original path)
    newest = max(save_dir.rglob("checkpoints/*.ckpt"), key=lambda p: p.stat().st_mtime_ns)
    last = torch.load(newest, map_location="cpu", weights_only=False)
    assert last["epoch"] == 1
    assert last["global_step"] == 4
    assert "text_encoder.model" in last[CHECKPOINT_KEY]["lean"]


def test_qwen2_audio_checkpoint_restores_with_a_backbone_override(tmp_path: Path, tiny_qwen2_audio_dir: Path) -> None:  # noqa: F811
    extra = [f"--model.init_args.backbone={tiny_qwen2_audio_dir}", "--model.init_args.random_config=null"]
    main(["fit", *_args(QWEN, tmp_path, "qwen", *extra, "--test_after_fit=true")])
    ckpt = next(tmp_path.rglob("checkpoints/best-*.ckpt"))
    assert set(checkpoint_info(ckpt)["lean"]) == {"backbone"}
    moved = tmp_path / "moved-base"  # the same base somewhere else
    shutil.copytree(tiny_qwen2_audio_dir, moved)
    model = restore_model(ckpt, backbone=str(moved))
    assert model.hparams.backbone == str(moved)
    _assert_same(_restored_predictions(model, ckpt, batches=2), _tested(tmp_path), atol=1e-6)
