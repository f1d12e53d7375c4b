from __future__ import annotations

import pytest
import torch
from torch import nn

from ser_lightning.nn.heads import GatedFusion, MLPHead


def test_two_layer_head():
    head = MLPHead(16, 5, hidden_dim=8, dropout=0.0)
    layers = list(head.net)
    assert [type(m) for m in layers] == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert (layers[0].in_features, layers[0].out_features, layers[-1].out_features) == (16, 8, 5)
    x = torch.randn(3, 16, requires_grad=True)
    out = head(x)
    assert out.shape == (3, 5)
    assert head.output_dim == 5
    torch.testing.assert_close(out, layers[3](torch.relu(layers[0](x))))
    out.sum().backward()
    assert all(p.grad is not None for p in head.parameters())


def test_mlp_head_returns_logits_not_probabilities():
    torch.manual_seed(0)
    logits = MLPHead(4, 3, hidden_dim=8)(torch.randn(64, 4) * 10)
    assert not torch.allclose(logits.sum(dim=-1), torch.ones(64))
    assert (logits < 0).any()


def test_heads_reject_bad_sizes():
    with pytest.raises(ValueError, match="positive"):
        MLPHead(0, 4)
    with pytest.raises(ValueError, match="dropout"):
        MLPHead(4, 3, dropout=1.0)


def test_gated_fusion_shapes_gate_range_and_formula():
    torch.manual_seed(0)
    fusion = GatedFusion(audio_dim=12, text_dim=7, out_dim=5)
    audio, text = torch.randn(4, 12), torch.randn(4, 7)
    fused = fusion(audio, text)
    gate = fusion.gate(audio, text)
    assert fused.shape == gate.shape == (4, 5)
    assert fusion.output_dim == 5
    assert ((gate > 0) & (gate < 1)).all()
    h_audio, h_text = torch.tanh(fusion.audio_proj(audio)), torch.tanh(fusion.text_proj(text))
    torch.testing.assert_close(fused, gate * h_audio + (1 - gate) * h_text)


def test_gated_fusion_follows_the_modality_its_gate_selects():
    fusion = GatedFusion(3, 2, 4)
    audio, text = torch.randn(2, 3), torch.randn(2, 2)
    with torch.no_grad():
        fusion.gate_proj.weight.zero_()
        fusion.gate_proj.bias.fill_(50.0)
        torch.testing.assert_close(fusion(audio, text), torch.tanh(fusion.audio_proj(audio)))
        fusion.gate_proj.bias.fill_(-50.0)
        torch.testing.assert_close(fusion(audio, text), torch.tanh(fusion.text_proj(text)))


def test_gated_fusion_trains_every_parameter():
    fusion = GatedFusion(6, 4, 3)
    fusion(torch.randn(5, 6), torch.randn(5, 4)).square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in fusion.parameters())
    with pytest.raises(ValueError, match="positive"):
        GatedFusion(6, 0, 3)
