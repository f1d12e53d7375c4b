"""Qwen2-Audio loading, LoRA targets, the trimmed-encoder forward and adapter save/load, on a tiny random model."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from qwen2_fixtures import RATE, tone, write_tiny_qwen2_audio

from ser_lightning.alm import qwen2_audio_inputs
from ser_lightning.nn import EmotionClassifierHead
from ser_lightning.nn.qwen2_audio import apply_lora, load_lora, load_qwen2_audio, qwen2_audio_hidden_states
from ser_lightning.nn.qwen2_audio.forward import encode_audio

CLASSES = ("Anger", "Happiness", "Neutral", "Sadness")
# Trimmed vs padded encoder, fp32 on CPU: the two differ only by summation order (measured ~1e-6).
ATOL = 1e-5


@pytest.fixture(scope="module")
def backbone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_qwen2_audio(tmp_path_factory.mktemp("tiny_qwen2_audio"))


@pytest.fixture(scope="module")
def fp32(backbone: Path):
    model, processor = load_qwen2_audio(backbone, dtype=torch.float32)
    return model.eval(), processor


def _batch(processor, seconds=(1.0, 3.3, 0.5), freqs=(220.0, 330.0, 500.0)):
    audios = [tone(s, f) for s, f in zip(seconds, freqs, strict=True)]
    transcripts = ["i am so happy today", None, "leave me alone"][: len(audios)]
    return qwen2_audio_inputs(processor, audios, transcripts, ["a", "b", "c"][: len(audios)], CLASSES, RATE)


def _hidden(model, batch, **kwargs) -> torch.Tensor:
    return qwen2_audio_hidden_states(
        model,
        batch["input_ids"],
        batch["attention_mask"],
        batch["input_features"],
        batch["feature_attention_mask"],
        **kwargs,
    )


def test_load_from_directory_frozen_bf16_right_padded(backbone: Path) -> None:
    model, processor = load_qwen2_audio(backbone)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert not any(p.requires_grad for p in model.parameters())
    assert processor.tokenizer.padding_side == "right"
    assert processor.feature_extractor.feature_size == model.config.audio_config.num_mel_bins == 128
    model, _ = load_qwen2_audio(backbone, dtype="float32", gradient_checkpointing=True)
    assert next(model.parameters()).dtype == torch.float32
    assert any(m.gradient_checkpointing for m in model.modules() if hasattr(m, "gradient_checkpointing"))
    for layer in model.model.language_model.layers:
        assert layer.gradient_checkpointing
        assert layer._gradient_checkpointing_func.keywords["use_reentrant"] is False


def test_a_missing_local_directory_is_reported(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_qwen2_audio(tmp_path / "nowhere")


def test_quantization_errors_name_the_extra_and_cuda(backbone: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="'4bit' or '8bit'"):
        load_qwen2_audio(backbone, quantization="2bit")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    if importlib.util.find_spec("bitsandbytes") is not None:
        with pytest.raises(RuntimeError, match="CUDA"):
            load_qwen2_audio(backbone, quantization="4bit")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real_find_spec(name, *a)
    )
    with pytest.raises(ImportError, match=r"ser-lightning\[qlora\]"):
        load_qwen2_audio(backbone, quantization="8bit")


def _lora_modules(model) -> list[str]:
    return sorted({name.rsplit(".lora_", 1)[0] for name, _ in model.named_parameters() if ".lora_" in name})


def test_lora_on_the_language_model_projections_only(backbone: Path) -> None:
    model, _ = load_qwen2_audio(backbone)
    peft_model = apply_lora(model)
    modules = _lora_modules(peft_model)
    # 2 language-model layers x q/k/v/o; a plain name list would also hit the encoder's 2 x q/k/v (14 in all)
    assert len(modules) == 8
    assert all(".language_model.layers." in m for m in modules)
    assert not any("audio_tower" in m for m in modules)
    trainable = {n: p for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable
    assert all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert all(p.dtype == torch.float32 for p in trainable.values())
    # r=8 on hidden 32 (q, o: 32 -> 32; k, v: 32 -> 16 with 2 kv heads of 8): per layer 512 + 384 + 384 + 512
    assert sum(p.numel() for p in trainable.values()) == 2 * (512 + 384 + 384 + 512)
    config = peft_model.peft_config["default"]
    assert (config.r, config.lora_alpha, config.lora_dropout) == (8, 16, 0.2)


def test_lora_on_the_encoder_when_asked(backbone: Path) -> None:
    model, _ = load_qwen2_audio(backbone)
    modules = _lora_modules(apply_lora(model, include_audio_encoder=True))
    encoder = [m for m in modules if "audio_tower" in m]
    assert len(modules) == 14
    assert len(encoder) == 6
    assert {m.rsplit(".", 1)[1] for m in encoder} == {"q_proj", "k_proj", "v_proj"}


def test_trimmed_path_matches_the_stock_padded_forward(fp32) -> None:
    model, processor = fp32
    batch = _batch(processor)
    frames_seen = []
    hook = model.model.audio_tower.conv1.register_forward_hook(lambda m, i, o: frames_seen.append(i[0].shape[-1]))
    with torch.no_grad():
        stock = model(**batch, output_hidden_states=True).hidden_states[-1]
        fast = _hidden(model, batch)
    hook.remove()
    assert frames_seen == [3000, 336]  # stock, then 330 valid frames + 2 look-ahead, rounded up to 8
    valid = batch["attention_mask"].bool()
    assert fast.shape == stock.shape
    torch.testing.assert_close(fast[valid], stock[valid], atol=ATOL, rtol=0)
    with torch.no_grad():
        trimmed = encode_audio(model.model.audio_tower, batch["input_features"], batch["feature_attention_mask"])
        padded = encode_audio(
            model.model.audio_tower, batch["input_features"], batch["feature_attention_mask"], trim=False
        )
    assert [t.shape[0] for t in trimmed] == [25, 82, 12]  # ((T - 1) // 2 + 1 - 2) // 2 + 1 for T = 100, 330, 50
    for a, b in zip(trimmed, padded, strict=True):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


def test_audio_reaches_the_model(fp32) -> None:
    model, processor = fp32
    same_text = [tone(1.0, 220.0), tone(1.0, 880.0)]
    batch = qwen2_audio_inputs(processor, same_text, ["hi", "hi"], ["a", "a"], CLASSES, RATE)
    assert torch.equal(batch["input_ids"][0], batch["input_ids"][1])
    with torch.no_grad():
        hidden = _hidden(model, batch)
    last = batch["attention_mask"].sum(-1) - 1
    assert not torch.allclose(hidden[0, last[0]], hidden[1, last[1]], atol=1e-4)


def test_padding_in_the_batch_does_not_change_a_prediction(fp32) -> None:
    model, processor = fp32
    torch.manual_seed(0)
    head = EmotionClassifierHead(model.config.text_config.hidden_size, len(CLASSES)).eval()
    batch = _batch(processor)
    with torch.no_grad():
        together = head(_hidden(model, batch), batch["attention_mask"])
        for i in range(3):
            one = _batch(processor, seconds=((1.0, 3.3, 0.5)[i],), freqs=((220.0, 330.0, 500.0)[i],))
            one["input_ids"] = batch["input_ids"][i : i + 1, : int(batch["attention_mask"][i].sum())]
            one["attention_mask"] = batch["attention_mask"][i : i + 1, : one["input_ids"].shape[1]]
            alone = head(_hidden(model, one), one["attention_mask"])
            torch.testing.assert_close(alone[0], together[i], atol=ATOL, rtol=0)


def _perturb_adapters(peft_model) -> None:
    torch.manual_seed(3)
    for name, param in peft_model.named_parameters():
        if ".lora_B." in name:  # B starts at zero: without this the adapters would be a no-op
            param.data.normal_(0.0, 0.5)


def test_adapters_and_head_save_and_load_reproduce_predictions(backbone: Path, tmp_path: Path) -> None:
    model, processor = load_qwen2_audio(backbone, dtype=torch.float32)
    peft_model = apply_lora(model).eval()
    _perturb_adapters(peft_model)
    head = EmotionClassifierHead(model.config.text_config.hidden_size, len(CLASSES)).eval()
    batch = _batch(processor)
    with torch.no_grad():
        before = head(_hidden(peft_model, batch), batch["attention_mask"])
    peft_model.save_pretrained(tmp_path / "adapter")
    torch.save(head.state_dict(), tmp_path / "head.pt")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()

    base, _ = load_qwen2_audio(backbone, dtype=torch.float32)
    reloaded_head = EmotionClassifierHead(base.config.text_config.hidden_size, len(CLASSES)).eval()
    reloaded_head.load_state_dict(torch.load(tmp_path / "head.pt", weights_only=True))
    with torch.no_grad():
        without_adapters = reloaded_head(_hidden(base, batch), batch["attention_mask"])
        reloaded = load_lora(base, tmp_path / "adapter").eval()
        after = reloaded_head(_hidden(reloaded, batch), batch["attention_mask"])
    assert not torch.allclose(without_adapters, before, atol=1e-4)
    torch.testing.assert_close(after, before, atol=1e-6, rtol=0)
    assert not any(p.requires_grad for p in reloaded.parameters())


def test_training_step_updates_only_adapters_and_head(backbone: Path) -> None:
    model, processor = load_qwen2_audio(backbone, dtype=torch.float32, gradient_checkpointing=True)
    peft_model = apply_lora(model).train()
    _perturb_adapters(peft_model)
    head = EmotionClassifierHead(model.config.text_config.hidden_size, len(CLASSES)).train()
    batch = _batch(processor, seconds=(1.0, 0.5), freqs=(220.0, 500.0))
    logits = head(_hidden(peft_model, batch), batch["attention_mask"])
    torch.log_softmax(logits, -1)[:, 0].sum().backward()
    lora_grads = [p.grad for n, p in peft_model.named_parameters() if ".lora_A." in n]
    assert lora_grads
    assert all(g is not None and g.abs().sum() > 0 for g in lora_grads)
    assert all(p.grad is None for n, p in peft_model.named_parameters() if ".lora_" not in n)
    assert all(p.grad is not None for p in head.parameters())
