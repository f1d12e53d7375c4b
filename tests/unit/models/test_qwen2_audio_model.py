"""Qwen2AudioDistribution on the tiny random Qwen2-Audio saved like a hub checkpoint (no DataModule, no download)."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from qwen2_fixtures import tiny_qwen2_audio_dir, tone  # noqa: F401  (tiny_qwen2_audio_dir is a fixture)
from safetensors.torch import load_file
from scipy.spatial.distance import jensenshannon
from scipy.stats import entropy as scipy_entropy

from ser_lightning.alm import Qwen2AudioFeatures
from ser_lightning.models import Qwen2AudioDistribution
from ser_lightning.models.qwen2_audio import accumulation_steps
from ser_lightning.nn import EmotionClassifierHead
from ser_lightning.nn.qwen2_audio import load_lora, load_qwen2_audio, qwen2_audio_hidden_states
from ser_lightning.types import DataFacts

CLASSES = ["Anger", "Happiness", "Neutral", "Sadness"]


def _facts(max_batch_size: int) -> DataFacts:
    """The data facts of a 4-class DataModule with batches of ``max_batch_size``."""
    return DataFacts(
        num_classes=4,
        classes=CLASSES,
        bin_edges=None,
        class_counts=None,
        crop_seconds=None,
        max_text_length=64,
        text_tokenizer=None,
        label_source="primary",
        sample_rate=16000,
        max_batch_size=max_batch_size,
    )
SECONDS, FREQS = (1.0, 2.6, 0.5), (220.0, 330.0, 500.0)
TEXTS = ["i am so happy today", "", "leave me alone"]
ATOL = 1e-5  # fp32 on CPU; trimmed encoder vs padded differs by summation order only (~1e-6)


def _model(backbone: Path, seed: int = 0, **kwargs) -> Qwen2AudioDistribution:
    torch.manual_seed(seed)
    model = Qwen2AudioDistribution(backbone=str(backbone), num_classes=4, classes=CLASSES, dtype="float32", **kwargs)
    model.configure_model()
    return model.eval()


def _perturb_adapters(model: Qwen2AudioDistribution, seed: int = 3) -> None:
    """LoRA B starts at zero: give the adapters an effect so that losing them would show."""
    torch.manual_seed(seed)
    for name, param in model.named_parameters():
        if ".lora_B." in name:
            param.data.normal_(0.0, 0.5)


def _batch(backbone: Path, rows=(0, 1, 2), speakers: bool = False) -> dict:
    """A collated batch as the DataModule delivers it, with the processor inputs from Qwen2AudioFeatures."""
    audios = [tone(SECONDS[i], FREQS[i]) for i in rows]
    longest = max(len(a) for a in audios)
    audio = torch.zeros(len(rows), longest)
    mask = torch.zeros(len(rows), longest, dtype=torch.long)
    for r, a in enumerate(audios):
        audio[r, : len(a)] = torch.from_numpy(a)
        mask[r, : len(a)] = 1
    targets = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.25, 0.25, 0.25, 0.25]])[list(rows)]
    batch = {
        "audio": audio,
        "audio_mask": mask,
        "transcripts": [TEXTS[i] for i in rows],
        "ids": [f"utt{i}" for i in rows],
        "targets": targets,
        "entropy": torch.tensor(scipy_entropy(targets.double().numpy(), axis=1)),
    }
    if speakers:
        batch["speakers"] = ["a"] * len(rows)
    transform = pickle.loads(pickle.dumps(Qwen2AudioFeatures(CLASSES, backbone=str(backbone))))  # as in a worker
    batch.update(transform(batch))
    return batch


@pytest.fixture(scope="module")
def model(tiny_qwen2_audio_dir: Path) -> Qwen2AudioDistribution:  # noqa: F811
    model = _model(tiny_qwen2_audio_dir)
    _perturb_adapters(model)
    return model


@pytest.fixture(scope="module")
def batch(tiny_qwen2_audio_dir: Path) -> dict:  # noqa: F811
    return _batch(tiny_qwen2_audio_dir)


def test_features_pickle_without_the_processor(tiny_qwen2_audio_dir: Path) -> None:  # noqa: F811
    features = Qwen2AudioFeatures(CLASSES, backbone=str(tiny_qwen2_audio_dir))
    assert features.processor is not None
    clone = pickle.loads(pickle.dumps(features))
    assert clone._processor is None
    without = _batch(tiny_qwen2_audio_dir, (0,))
    with_speaker = _batch(tiny_qwen2_audio_dir, (0,), speakers=True)
    assert set(without) >= {"input_ids", "attention_mask", "input_features", "feature_attention_mask"}
    assert without["input_ids"].shape[1] < with_speaker["input_ids"].shape[1]  # "Speaker: a" adds a token


def test_forward_and_loss_match_scipy(model: Qwen2AudioDistribution, batch: dict) -> None:
    with torch.no_grad():
        probs = model(batch)
        terms = model.training_loss(batch)
    assert probs.shape == (3, 4)
    assert probs.dtype == torch.float32
    torch.testing.assert_close(probs.sum(-1), torch.ones(3))
    p, q = probs.double().numpy(), batch["targets"].double().numpy()
    js = np.mean([jensenshannon(a, b) ** 2 for a, b in zip(p, q, strict=True)])  # scipy: sqrt of JS, natural log
    ent = scipy_entropy(p, axis=1).mean()
    assert float(terms["js"]) == pytest.approx(js, abs=1e-5)
    assert float(terms["pred_entropy"]) == pytest.approx(ent, abs=1e-5)
    assert float(terms["loss"]) == pytest.approx(js + 0.08 * ent, abs=1e-5)


def test_the_model_computes_missing_features_itself(model: Qwen2AudioDistribution, batch: dict) -> None:
    raw = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask", "input_features")}
    with torch.no_grad():
        torch.testing.assert_close(model(raw), model(batch), atol=1e-6, rtol=0)


def test_lora_on_the_language_model_attention_only(model: Qwen2AudioDistribution) -> None:
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    lora = sorted({n.rsplit(".lora_", 1)[0] for n in trainable if ".lora_" in n})
    assert len(lora) == 8  # 2 layers x q/k/v/o
    assert all(".language_model.layers." in m and m.rsplit(".", 1)[1] in {"q_proj", "k_proj", "v_proj", "o_proj"}
               for m in lora)
    assert all(n.startswith("head.") or ".lora_" in n for n in trainable)
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)


def test_padding_does_not_change_a_prediction(model: Qwen2AudioDistribution, tiny_qwen2_audio_dir: Path) -> None:  # noqa: F811
    together = _batch(tiny_qwen2_audio_dir)
    with torch.no_grad():
        probs = model(together)
        for i in range(3):
            alone = model(_batch(tiny_qwen2_audio_dir, (i,)))
            torch.testing.assert_close(alone[0], probs[i], atol=ATOL, rtol=0)


def test_checkpoint_holds_only_trained_parameters_and_reloads(
    model: Qwen2AudioDistribution,
    batch: dict,
    tiny_qwen2_audio_dir: Path,  # noqa: F811
) -> None:
    checkpoint = {"state_dict": model.state_dict()}
    model.on_save_checkpoint(checkpoint)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(checkpoint["state_dict"]) == trainable
    assert model.strict_loading is False
    fresh = _model(tiny_qwen2_audio_dir, seed=1)  # other head initialisation, adapters at zero
    with torch.no_grad():
        expected, before = model(batch), fresh(batch)
        assert not torch.allclose(before, expected, atol=1e-4)
        fresh.on_load_checkpoint(checkpoint)
        fresh.load_state_dict(checkpoint["state_dict"], strict=False)
        torch.testing.assert_close(fresh(batch), expected, atol=1e-6, rtol=0)
    incomplete = {"state_dict": {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("head.")}}
    with pytest.raises(KeyError, match="trained parameters"):
        fresh.on_load_checkpoint(incomplete)


def test_adapter_directory_reloads_with_load_lora(
    model: Qwen2AudioDistribution,
    batch: dict,
    tiny_qwen2_audio_dir: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    directory = model.save_adapter(tmp_path / "best_adapter")
    spec = json.loads((directory / "head.json").read_text())
    assert spec["classes"] == CLASSES
    assert spec["hidden_size"] == 32
    base, _ = load_qwen2_audio(tiny_qwen2_audio_dir, dtype=torch.float32)
    peft_model = load_lora(base, directory).eval()
    head = EmotionClassifierHead(spec["hidden_size"], spec["num_classes"], spec["num_heads"]).eval()
    head.load_state_dict(load_file(directory / "head.safetensors"))
    with torch.no_grad():
        hidden = qwen2_audio_hidden_states(
            peft_model, batch["input_ids"], batch["attention_mask"], batch["input_features"],
            batch["feature_attention_mask"],
        )
        reloaded = head(hidden, batch["attention_mask"]).softmax(-1)
        torch.testing.assert_close(reloaded, model(batch), atol=1e-6, rtol=0)


def test_encoder_cache_gives_the_uncached_predictions(
    model: Qwen2AudioDistribution,
    batch: dict,
    tiny_qwen2_audio_dir: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    cached = _model(tiny_qwen2_audio_dir, encoder_cache_dir=str(tmp_path / "cache"))
    cached.load_state_dict(model.state_dict(), strict=False)
    with torch.no_grad():
        first = cached(batch)
        assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 3
        second = cached(batch)  # read back from disk
        expected = model(batch)
    torch.testing.assert_close(first, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(second, expected, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="lora_on_audio_encoder"):
        Qwen2AudioDistribution(str(tiny_qwen2_audio_dir), encoder_cache_dir=str(tmp_path), lora_on_audio_encoder=True)


def test_half_precision_weights_are_refused(tiny_qwen2_audio_dir: Path) -> None:  # noqa: F811
    model = Qwen2AudioDistribution(str(tiny_qwen2_audio_dir), classes=CLASSES)
    model._trainer = SimpleNamespace(precision="bf16-true", strategy=SimpleNamespace(root_device=torch.device("cpu")))
    with pytest.raises(ValueError, match="bf16-mixed"):
        model.configure_model()


@pytest.mark.parametrize(
    ("world", "per_device", "expected"), [(1, 8, 8), (2, 8, 4), (3, 8, 3), (8, 8, 1), (16, 8, 1), (1, 5, 13)]
)
def test_accumulation_reaches_the_effective_batch(world: int, per_device: int, expected: int) -> None:
    assert accumulation_steps(64, world, per_device) == expected
    model = Qwen2AudioDistribution("unused", classes=CLASSES)
    model.connect_data(_facts(max_batch_size=per_device))  # the CLI hands over SERDataModule.facts()
    trainer = SimpleNamespace(world_size=world, accumulate_grad_batches=1)
    model._trainer = trainer
    model.setup("fit")
    assert trainer.accumulate_grad_batches == expected
    model.hparams.effective_batch_size = None
    trainer.accumulate_grad_batches = 5
    model.setup("fit")
    assert trainer.accumulate_grad_batches == 5


def test_optimizer_warmup_then_cosine(model: Qwen2AudioDistribution) -> None:
    model._trainer = SimpleNamespace(estimated_stepping_batches=100)
    try:
        config = model.configure_optimizers()
    finally:
        model._trainer = None
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert config["lr_scheduler"]["interval"] == "step"
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.03
    assert no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"])
    assert all(p.ndim == 1 for p in no_decay["params"])
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == trainable
    lrs = []
    for _ in range(101):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    peak = 2.5e-6  # warm-up over ceil(0.15 x 100) = 15 steps, then 0.5 (1 + cos(pi (s - 15) / 85))
    assert lrs[0] == 0.0
    assert lrs[5] == pytest.approx(peak * 5 / 15)
    assert lrs[15] == pytest.approx(peak)
    assert lrs[15 + 85 // 2] == pytest.approx(peak * 0.5 * (1 + math.cos(math.pi * 42 / 85)))
    assert lrs[100] == 0.0
    assert all(a >= b for a, b in zip(lrs[15:], lrs[16:], strict=False))
