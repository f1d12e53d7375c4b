"""The TC-GRU head (paper 004's authors' ``TCGRUHead``) against a tiny case computed by hand, and its padding rule."""

from __future__ import annotations

import math

import pytest
import torch

from ser_lightning.nn import AudioEncoder, TCGRUPooling, tiny_audio_config


def _sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def _tiny_head() -> TCGRUPooling:
    head = TCGRUPooling(1, conv_channels=1, conv_kernel=3, gru_hidden=1, gru_layers=1, emb_dim=1, dropout=0.0)
    with torch.no_grad():
        head.conv.weight.copy_(torch.tensor([[[0.5, 1.0, -0.25]]]))
        head.conv.bias.fill_(0.1)
        head.gru.weight_ih_l0.copy_(torch.tensor([[0.3], [-0.2], [0.8]]))  # rows: reset, update, new
        head.gru.weight_hh_l0.copy_(torch.tensor([[0.1], [0.4], [-0.6]]))
        head.gru.bias_ih_l0.copy_(torch.tensor([0.05, 0.0, -0.1]))
        head.gru.bias_hh_l0.copy_(torch.tensor([0.0, 0.1, 0.2]))
        head.emb[0].weight.fill_(1.5)
        head.emb[0].bias.fill_(-0.2)
    return head.eval()


def _by_hand(frames: list[float]) -> float:
    x = [0.0, *frames, 0.0]  # the convolution's zero padding
    conv = [max(0.0, 0.5 * x[t - 1] + 1.0 * x[t] - 0.25 * x[t + 1] + 0.1) for t in range(1, len(x) - 1)]
    h = 0.0
    for c in conv:  # torch.nn.GRU's equations
        r = _sigmoid(0.3 * c + 0.05 + 0.1 * h + 0.0)
        z = _sigmoid(-0.2 * c + 0.0 + 0.4 * h + 0.1)
        n = math.tanh(0.8 * c - 0.1 + r * (-0.6 * h + 0.2))
        h = (1 - z) * n + z * h
    state = h + sum(conv) / len(conv)  # skip connection from the conv mean (identity: 1 channel = 1 hidden)
    return max(0.0, 1.5 * state - 0.2)


def test_tc_gru_matches_the_hand_computation_and_ignores_padding():
    head = _tiny_head()
    hidden = torch.tensor([[1.0, 2.0, -1.0, 5.0, 7.0], [0.5, -0.5, 1.5, 2.0, 1.0]]).unsqueeze(-1)
    mask = torch.tensor([[True, True, True, False, False], [True] * 5])
    out = head(hidden, mask)
    assert out.shape == (2, 1)
    assert out[0, 0].item() == pytest.approx(_by_hand([1.0, 2.0, -1.0]), abs=1e-6)  # padded 5, 7 never seen
    assert out[1, 0].item() == pytest.approx(_by_hand([0.5, -0.5, 1.5, 2.0, 1.0]), abs=1e-6)
    alone = head(hidden[:1, :3], mask[:1, :3])
    assert torch.allclose(alone, out[:1], atol=1e-7)


def test_tc_gru_as_the_audio_encoders_pooling():
    encoder = AudioEncoder(
        config=tiny_audio_config(), freeze="none", pooling="tc_gru", pooling_options={"emb_dim": 8, "gru_hidden": 16}
    ).eval()
    assert encoder.output_dim == 8
    audio = torch.randn(2, 8000)
    mask = torch.ones(2, 8000, dtype=torch.long)
    mask[1, 5000:] = 0
    hidden, frame_mask = encoder.frames(audio, mask)
    assert hidden.shape[:2] == frame_mask.shape
    assert hidden.shape[-1] == 32
    pooled = encoder(audio, mask)
    assert pooled.shape == (2, 8)
    assert torch.allclose(encoder(audio[1:, :5000], mask[1:, :5000]), pooled[1:], atol=1e-5)
    with pytest.raises(ValueError, match="odd"):
        TCGRUPooling(4, conv_kernel=2)


def test_below_layers_freezes_everything_but_the_transformer_layers():
    encoder = AudioEncoder(config=tiny_audio_config(), freeze="below_layers")
    layer_ids = {id(p) for p in encoder.transformer_layers().parameters()}
    trainable = {id(p) for p in encoder.parameters() if p.requires_grad}
    assert trainable == layer_ids
    encoder.train()
    assert not encoder.model.feature_extractor.training
