from __future__ import annotations

import pytest
import torch

from ser_lightning.nn.pooling import AttentiveStatisticsPooling, MeanPooling, masked_mean

LENGTHS = [7, 3, 1, 5]


def _padded(lengths: list[int], dim: int = 6, fill: float = float("nan")) -> tuple[torch.Tensor, torch.Tensor]:
    """Random states, with ``fill`` (NaN by default) in every padded position, and their mask."""
    gen = torch.Generator().manual_seed(0)
    hidden = torch.full((len(lengths), max(lengths), dim), fill)
    mask = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for i, n in enumerate(lengths):
        hidden[i, :n] = torch.randn(n, dim, generator=gen)
        mask[i, :n] = 1
    return hidden, mask


def test_masked_mean_matches_manual_mean_and_ignores_padding_values():
    hidden, mask = _padded(LENGTHS)
    pooled = masked_mean(hidden, mask)
    expected = torch.stack([hidden[i, :n].mean(dim=0) for i, n in enumerate(LENGTHS)])
    assert pooled.shape == (4, 6)
    assert torch.isfinite(pooled).all()
    torch.testing.assert_close(pooled, expected)


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.long, torch.float32])
def test_masked_mean_accepts_any_mask_dtype(mask_dtype):
    hidden, mask = _padded(LENGTHS, fill=0.0)
    torch.testing.assert_close(masked_mean(hidden, mask.to(mask_dtype)), masked_mean(hidden, mask))


def test_masked_mean_without_mask_is_plain_mean_and_empty_item_gives_zeros():
    hidden = torch.randn(2, 5, 3)
    torch.testing.assert_close(masked_mean(hidden), hidden.mean(dim=1))
    mask = torch.tensor([[1, 1, 0, 0, 0], [0, 0, 0, 0, 0]])
    pooled = masked_mean(hidden, mask)
    torch.testing.assert_close(pooled[1], torch.zeros(3))


def test_masked_mean_rejects_bad_shapes():
    with pytest.raises(ValueError, match="does not match"):
        masked_mean(torch.randn(2, 5, 3), torch.ones(2, 4))
    with pytest.raises(ValueError, match=r"\(B, T, D\)"):
        masked_mean(torch.randn(2, 5), torch.ones(2, 5))


def test_mean_pooling_module():
    hidden, mask = _padded(LENGTHS)
    pooling = MeanPooling()
    assert pooling.output_dim(6) == 6
    torch.testing.assert_close(pooling(hidden, mask), masked_mean(hidden, mask))


def test_attentive_pooling_matches_manual_statistics_per_item():
    torch.manual_seed(0)
    hidden, mask = _padded(LENGTHS)
    pooling = AttentiveStatisticsPooling(6, attention_dim=8)
    pooled = pooling(hidden, mask)
    assert pooled.shape == (4, 12)
    assert pooling.output_dim(6) == 12
    for i, n in enumerate(LENGTHS):
        frames = hidden[i, :n]
        alpha = torch.softmax(pooling.attention(frames).squeeze(-1), dim=0).unsqueeze(-1)
        mean = (alpha * frames).sum(dim=0)
        std = ((alpha * (frames - mean).square()).sum(dim=0)).clamp(min=pooling.eps).sqrt()
        torch.testing.assert_close(pooled[i], torch.cat([mean, std]), atol=1e-5, rtol=1e-5)


def test_attentive_pooling_is_padding_invariant_and_weights_skip_padding():
    torch.manual_seed(0)
    hidden, mask = _padded(LENGTHS)
    pooling = AttentiveStatisticsPooling(6, attention_dim=8)
    batched = pooling(hidden, mask)
    single = torch.cat([pooling(hidden[i : i + 1, :n]) for i, n in enumerate(LENGTHS)])
    torch.testing.assert_close(batched, single, atol=1e-6, rtol=1e-6)
    weights = pooling.weights(hidden.nan_to_num(), mask)
    assert (weights[mask == 0] == 0).all()
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(4))


def test_attentive_pooling_gradient_is_finite_for_constant_frames():
    pooling = AttentiveStatisticsPooling(4, attention_dim=3)
    hidden = torch.ones(2, 5, 4, requires_grad=True)
    pooling(hidden, torch.ones(2, 5)).sum().backward()
    assert torch.isfinite(hidden.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in pooling.parameters())


def test_attentive_pooling_rejects_other_input_sizes():
    with pytest.raises(ValueError, match="dim=6"):
        AttentiveStatisticsPooling(6).output_dim(8)
    with pytest.raises(ValueError, match="positive"):
        AttentiveStatisticsPooling(0)
