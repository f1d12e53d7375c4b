"""EmotionClassifierHead: the authors' layers, the padding mask, fp32 parameters."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ser_lightning.nn import EmotionClassifierHead


def _authors_forward(head: EmotionClassifierHead, hidden: torch.Tensor) -> torch.Tensor:
    """The authors' forward (train.py, EmotionClassifierHead.forward): full self-attention, then position 0."""
    attn, _ = head.attention(hidden, hidden, hidden)  # batch_first, as their transpose-in/transpose-out
    first = attn[:, 0]
    x = head.act(head.dropout1(head.dense1(head.norm1(first)))) + first
    x = head.act(head.dropout2(head.dense2(head.norm2(x))))
    return head.output(head.norm3(x))


def test_layers_follow_the_authors() -> None:
    head = EmotionClassifierHead(hidden_size=32, num_classes=4)
    assert head.attention.num_heads == 8
    assert head.dense1.in_features == head.dense1.out_features == 32
    assert (head.dense2.out_features, head.output.out_features) == (16, 4)
    assert (head.dropout1.p, head.dropout2.p) == (0.15, 0.1)
    assert all(p.dtype == torch.float32 for p in head.parameters())


def test_unpadded_output_equals_the_authors_full_attention() -> None:
    torch.manual_seed(0)
    head = EmotionClassifierHead(hidden_size=32, num_classes=4).eval()
    hidden = torch.randn(3, 7, 32)
    with torch.no_grad():
        ours = head(hidden, torch.ones(3, 7, dtype=torch.long))
        theirs = _authors_forward(head, hidden)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_padding_does_not_change_a_prediction() -> None:
    torch.manual_seed(1)
    head = EmotionClassifierHead(hidden_size=32, num_classes=4).eval()
    hidden = torch.randn(2, 5, 32)
    padded = torch.cat([hidden, 100 * torch.randn(2, 9, 32)], dim=1)  # loud garbage in the padding
    mask = torch.cat([torch.ones(2, 5), torch.zeros(2, 9)], dim=1).long()
    with torch.no_grad():
        short = head(hidden, torch.ones(2, 5, dtype=torch.long))
        long = head(padded, mask)
        unmasked = head(padded)
    torch.testing.assert_close(long, short, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(unmasked, short, atol=1e-3)  # the authors' unmasked head would change


def test_bf16_hidden_states_meet_fp32_parameters() -> None:
    head = EmotionClassifierHead(hidden_size=32, num_classes=3).eval()
    logits = head(torch.randn(2, 4, 32, dtype=torch.bfloat16), torch.ones(2, 4))
    assert logits.dtype == torch.float32
    assert logits.shape == (2, 3)


@pytest.mark.parametrize(("hidden", "heads"), [(30, 8), (32, 0)])
def test_heads_must_divide_the_width(hidden: int, heads: int) -> None:
    with pytest.raises(ValueError, match="num_heads"):
        EmotionClassifierHead(hidden_size=hidden, num_classes=4, num_heads=heads)


def test_gradients_reach_every_parameter() -> None:
    head = EmotionClassifierHead(hidden_size=16, num_classes=4, num_heads=4)
    loss = nn.functional.log_softmax(head(torch.randn(2, 3, 16), torch.ones(2, 3)), -1).sum()
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
