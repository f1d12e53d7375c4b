from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import Wav2Vec2FeatureExtractor

from ser_lightning.nn.audio import AudioEncoder, normalize_waveform, tiny_audio_config

# WavLM's attention calls F.multi_head_attention_forward with a bool padding mask and a float position bias
pytestmark = pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask:UserWarning")

LENGTHS = [8000, 5000, 2500, 6789]


@pytest.fixture(scope="module")
def clips() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [0.1 * torch.randn(n, generator=gen) + 0.01 for n in LENGTHS]


def _pad(clips: list[torch.Tensor], fill: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    audio = torch.full((len(clips), max(len(c) for c in clips)), fill)
    mask = torch.zeros(audio.shape, dtype=torch.long)
    for i, clip in enumerate(clips):
        audio[i, : len(clip)] = clip
        mask[i, : len(clip)] = 1
    return audio, mask


def _encoder(model_type: str = "wavlm", seed: int = 0, **kwargs) -> AudioEncoder:
    config = kwargs.pop("config", None) or tiny_audio_config(model_type)
    torch.manual_seed(seed)
    return AudioEncoder(config=config, **kwargs)


@pytest.mark.parametrize("model_type", ["wavlm", "wav2vec2"])
@pytest.mark.parametrize(("pooling", "layer_weighted_sum"), [("mean", False), ("attentive", True)])
def test_batch_of_four_equals_four_batches_of_one(clips, model_type, pooling, layer_weighted_sum):
    encoder = _encoder(model_type, pooling=pooling, layer_weighted_sum=layer_weighted_sum).eval()
    audio, mask = _pad(clips)
    with torch.no_grad():
        batched = encoder(audio, mask)
        single = torch.cat([encoder(clip[None], torch.ones(1, len(clip))) for clip in clips])
    assert batched.shape == (4, encoder.output_dim)
    assert encoder.output_dim == (32 if pooling == "mean" else 64)
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=0)


def test_padding_values_do_not_matter(clips):
    encoder = _encoder().eval()
    with torch.no_grad():
        zeros = encoder(*_pad(clips))
        noisy = encoder(*_pad(clips, fill=3.0))
    torch.testing.assert_close(zeros, noisy, atol=1e-6, rtol=0)


def test_frame_lengths_follow_the_model():
    encoder = _encoder()
    assert encoder.sample_rate == 16000
    # receptive field of the tiny front end: 8 + 7 * 4 + 7 * 16 = 148 samples
    assert encoder.frame_lengths(torch.tensor([16000, 148, 147])).tolist() == [248, 1, 0]
    with torch.no_grad():
        frames = encoder.model(torch.randn(1, 16000)).last_hidden_state.shape[1]
    assert frames == 248


@pytest.mark.parametrize(("feat_extract_norm", "passes_mask"), [("layer", True), ("group", False)])
def test_attention_mask_only_for_layer_norm_feature_encoders(clips, feat_extract_norm, passes_mask):
    config = tiny_audio_config("wav2vec2", feat_extract_norm=feat_extract_norm)
    encoder = _encoder(config=config).eval()
    assert encoder.uses_attention_mask is passes_mask
    seen = {}

    def record(module, args, kwargs):
        seen["attention_mask"] = kwargs.get("attention_mask")

    encoder.model.register_forward_pre_hook(record, with_kwargs=True)
    with torch.no_grad():
        out = encoder(*_pad(clips))
    assert (seen["attention_mask"] is not None) is passes_mask
    assert torch.isfinite(out).all()


def test_normalize_waveform_matches_the_feature_extractor(clips):
    audio, mask = _pad(clips, fill=5.0)
    normalized = normalize_waveform(audio, mask)
    reference = Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm(
        [a.numpy() for a in audio], attention_mask=mask.numpy(), padding_value=0.0
    )
    np.testing.assert_allclose(normalized.numpy(), np.stack(reference), atol=1e-5)
    assert (normalized[mask == 0] == 0).all()


def test_freeze_feature_extractor_default():
    encoder = _encoder()
    assert encoder.freeze == "feature_extractor"
    assert not any(p.requires_grad for p in encoder.model.feature_extractor.parameters())
    assert all(p.requires_grad for p in encoder.model.encoder.parameters())
    assert all(p.requires_grad for p in encoder.model.feature_projection.parameters())
    encoder.train()
    assert encoder.training
    assert encoder.model.encoder.training
    assert not encoder.model.feature_extractor.training


def test_freeze_all_runs_without_gradients_but_layer_weights_train(clips):
    encoder = _encoder(freeze="all", layer_weighted_sum=True).train()
    assert not any(p.requires_grad for p in encoder.model.parameters())
    assert not encoder.model.training
    assert [n for n, p in encoder.named_parameters() if p.requires_grad] == ["layer_weights"]
    encoder(*_pad(clips)).sum().backward()
    assert encoder.layer_weights.grad is not None
    no_weights = _encoder(freeze="all").train()
    assert not no_weights(*_pad(clips)).requires_grad


@pytest.mark.parametrize("model_type", ["wavlm", "wav2vec2", "hubert"])
@pytest.mark.parametrize("freeze", ["none", "feature_extractor"])
def test_every_trainable_parameter_gets_a_gradient(clips, model_type, freeze):
    """DDP without find_unused_parameters needs a gradient for every trainable parameter."""
    encoder = _encoder(model_type, freeze=freeze, pooling="attentive", layer_weighted_sum=True).train()
    encoder(*_pad(clips)).square().sum().backward()
    missing = [n for n, p in encoder.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    assert not encoder.model.masked_spec_embed.requires_grad  # SpecAugment off by default
    frozen = [n for n, p in encoder.named_parameters() if not p.requires_grad]
    assert "model.masked_spec_embed" in frozen
    others = [n for n in frozen if n != "model.masked_spec_embed"]
    if freeze == "none":
        assert others == []
    else:
        assert others
        assert all(n.startswith("model.feature_extractor.") for n in others)


def test_spec_augment_is_configurable(clips):
    off = _encoder()
    assert off.model.config.apply_spec_augment is False
    on = _encoder(mask_time_prob=0.5)
    assert on.model.config.apply_spec_augment is True
    assert on.model.config.mask_time_prob == 0.5
    assert on.model.masked_spec_embed.requires_grad
    assert torch.isfinite(on.train()(*_pad(clips))).all()


def test_layer_weighted_sum_shapes_and_reduces_to_last_layer(clips):
    encoder = _encoder(layer_weighted_sum=True).eval()
    assert encoder.layer_weights.shape == (3,)  # embedding output + 2 layers
    last_only = _encoder().eval()
    last_only.load_state_dict({k: v for k, v in encoder.state_dict().items() if k != "layer_weights"})
    with torch.no_grad():
        encoder.layer_weights.copy_(torch.tensor([-1e4, -1e4, 0.0]))
        torch.testing.assert_close(encoder(*_pad(clips)), last_only(*_pad(clips)), atol=1e-5, rtol=0)
        encoder.layer_weights.zero_()
        assert (encoder(*_pad(clips)) - last_only(*_pad(clips))).abs().max() > 1e-3


def test_loads_a_saved_checkpoint_by_path(tmp_path, clips):
    source = _encoder("wav2vec2").eval()
    source.model.save_pretrained(tmp_path)
    loaded = AudioEncoder(model=str(tmp_path), freeze="none").eval()
    assert type(loaded.model) is type(source.model)
    with torch.no_grad():
        torch.testing.assert_close(loaded(*_pad(clips)), source(*_pad(clips)))


def test_clear_errors_on_bad_input(clips):
    with pytest.raises(ValueError, match="exactly one"):
        AudioEncoder()
    with pytest.raises(ValueError, match="exactly one"):
        AudioEncoder(model="x", config=tiny_audio_config())
    with pytest.raises(ValueError, match="model_type"):
        AudioEncoder(config={"hidden_size": 32})
    with pytest.raises(ValueError, match="freeze"):
        AudioEncoder(config=tiny_audio_config(), freeze="encoder")
    encoder = _encoder()
    with pytest.raises(ValueError, match="too short"):
        encoder(torch.randn(2, 400), torch.tensor([[1] * 400, [1] * 50 + [0] * 350]))
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        encoder(torch.randn(400))
