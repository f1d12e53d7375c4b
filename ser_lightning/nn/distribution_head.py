"""The distribution head of Scaling Ambiguity (Sec. 2.4, Fig. 1) over a language model's last hidden states."""

from __future__ import annotations

from torch import Tensor, nn


class EmotionClassifierHead(nn.Module):
    """Self-attention, first position, residual MLP block, projection, linear: class logits from hidden states.

    Follows ``EmotionClassifierHead`` in the authors' ``model_finetuning/train.py``: 8-head self-attention over the
    sequence, the output at the first position, a residual block (LayerNorm -> Linear -> Dropout 0.15 -> GELU,
    + residual), a projection block (LayerNorm -> Linear to half width -> Dropout 0.1 -> GELU), LayerNorm and a
    Linear layer; the softmax of the paper's Fig. 1 is left to the model or the loss. Two changes that keep its
    outputs: padded positions are masked out of the attention (the authors' version attends to them, so a
    prediction depended on how much padding its batch had), and only the first position is used as a query
    (it is the only output read, and attention outputs are per query).
    """

    def __init__(
        self,
        hidden_size: int,
        num_classes: int,
        num_heads: int = 8,
        dropout: float = 0.15,
        projection_dropout: float = 0.1,
    ) -> None:
        """Build the head (its parameters in fp32 whatever the backbone's dtype).

        Args:
            hidden_size: size of the language model's hidden states (4096 for Qwen2-Audio-7B).
            num_classes: number of emotion classes.
            num_heads: attention heads; must divide ``hidden_size``.
            dropout: dropout of the residual block (0.15 in the authors' code).
            projection_dropout: dropout of the projection block (0.1 in the authors' code).
        """
        super().__init__()
        if hidden_size <= 0 or num_classes <= 0 or hidden_size // 2 == 0:
            raise ValueError(f"sizes must be positive, got hidden={hidden_size}, classes={num_classes}")
        if num_heads <= 0 or hidden_size % num_heads:
            raise ValueError(f"num_heads ({num_heads}) must divide hidden_size ({hidden_size})")
        self.output_dim = num_classes
        self.attention = nn.MultiheadAttention(hidden_size, num_heads, batch_first=True)
        self.norm1 = nn.LayerNorm(hidden_size)
        self.dense1 = nn.Linear(hidden_size, hidden_size)
        self.dropout1 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(hidden_size)
        self.dense2 = nn.Linear(hidden_size, hidden_size // 2)
        self.dropout2 = nn.Dropout(projection_dropout)
        self.act = nn.GELU()
        self.norm3 = nn.LayerNorm(hidden_size // 2)
        self.output = nn.Linear(hidden_size // 2, num_classes)

    def forward(self, hidden_states: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Map right-padded ``(B, T, H)`` hidden states (``attention_mask`` 1 = valid) to ``(B, C)`` logits."""
        x = hidden_states.to(self.output.weight.dtype)
        padding = None if attention_mask is None else ~attention_mask.to(device=x.device, dtype=bool)
        first, _ = self.attention(x[:, :1], x, x, key_padding_mask=padding, need_weights=False)
        first = first[:, 0]
        x = first + self.act(self.dropout1(self.dense1(self.norm1(first))))  # residual block
        x = self.act(self.dropout2(self.dense2(self.norm2(x))))  # projection block, no residual
        return self.output(self.norm3(x))
