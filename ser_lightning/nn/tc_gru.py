"""The TC-GRU temporal head of paper 004's authors: frame states -> temporal conv -> GRU -> utterance embedding.

Follows ``zahraomidi/MSP-PODCAST_WavLM`` ``utils/model_utils.py`` (``TCGRUHead``, ``_compute_h_last`` and
``forward``)::

    x     = Dropout(ReLU(Conv1d_k(h)))                 (B, T, C): temporal convolution, padding k // 2
    h_gru = last layer's final GRU state over x[:n]    (B, H): packed to each clip's n valid frames
    s     = h_gru + P(mean_t x[:n])                    skip from the conv summary (P: identity when C == H)
    out   = Dropout(ReLU(W s + b))                     (B, emb_dim)

Theirs derives each clip's frame count from its relative length, ``(lens * T).long()``; here the count is the
encoder's exact frame count (the mask). Padded frames are zeroed before the convolution, so a clip padded in a
batch gets the embedding it gets alone (theirs convolves over the encoder's padding outputs at a clip's end).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class TCGRUPooling(nn.Module):
    """Temporal conv + GRU over valid frames, with the conv-mean skip connection (paper 004's ``TCGRUHead``).

    Args:
        dim: size of the frame states (the encoder's hidden size).
        conv_channels: output channels of the temporal convolution (theirs: 256).
        conv_kernel: its kernel size (theirs: 3).
        gru_hidden: GRU hidden size (theirs: 256).
        gru_layers: GRU layers (theirs: 2).
        emb_dim: size of the returned embedding (theirs: 256).
        dropout: dropout after the conv, between GRU layers and after the embedding (theirs: 0.3 in the YAML).
        bidirectional: a bidirectional GRU (theirs: false); the final states of both directions are concatenated.
    """

    def __init__(
        self,
        dim: int,
        conv_channels: int = 256,
        conv_kernel: int = 3,
        gru_hidden: int = 256,
        gru_layers: int = 2,
        emb_dim: int = 256,
        dropout: float = 0.1,
        bidirectional: bool = False,
    ) -> None:
        super().__init__()
        if min(dim, conv_channels, conv_kernel, gru_hidden, gru_layers, emb_dim) <= 0:
            raise ValueError("TCGRUPooling sizes must be positive")
        if conv_kernel % 2 == 0:
            raise ValueError(f"conv_kernel must be odd (same-length output), got {conv_kernel}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.dim = dim
        self.emb_dim = emb_dim
        self.conv = nn.Conv1d(dim, conv_channels, conv_kernel, padding=conv_kernel // 2)
        self.drop = nn.Dropout(dropout)
        self.gru = nn.GRU(
            conv_channels,
            gru_hidden,
            num_layers=gru_layers,
            batch_first=True,
            dropout=dropout if gru_layers > 1 else 0.0,
            bidirectional=bidirectional,
        )
        state_dim = gru_hidden * (2 if bidirectional else 1)
        self.skip = nn.Identity() if conv_channels == state_dim else nn.Linear(conv_channels, state_dim)
        self.emb = nn.Sequential(nn.Linear(state_dim, emb_dim), nn.ReLU(), nn.Dropout(dropout))

    def output_dim(self, input_dim: int) -> int:
        """Size of the pooled vector (``emb_dim``); ``input_dim`` must equal ``dim``."""
        if input_dim != self.dim:
            raise ValueError(f"TCGRUPooling was built for dim={self.dim}, not {input_dim}")
        return self.emb_dim

    def forward(self, hidden: Tensor, mask: Tensor | None = None) -> Tensor:
        """Pool ``(B, T, dim)`` frame states over the valid frames of ``mask`` ``(B, T)`` into ``(B, emb_dim)``."""
        if hidden.dim() != 3:
            raise ValueError(f"expected hidden states of shape (B, T, D), got {tuple(hidden.shape)}")
        valid = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device) if mask is None else mask.bool()
        lengths = valid.sum(dim=1)
        if bool((lengths < 1).any()):
            raise ValueError("every clip needs at least one valid frame")
        hidden = torch.where(valid.unsqueeze(-1), hidden, torch.zeros((), dtype=hidden.dtype, device=hidden.device))
        x = self.drop(torch.relu(self.conv(hidden.transpose(1, 2)))).transpose(1, 2)  # (B, T, C)
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, h_n = self.gru(packed)  # (layers * directions, B, H), in the batch's original order
        state = torch.cat([h_n[-2], h_n[-1]], dim=-1) if self.gru.bidirectional else h_n[-1]
        frame_mask = valid.unsqueeze(-1).to(x.dtype)
        conv_mean = (x * frame_mask).sum(dim=1) / lengths.unsqueeze(-1).to(x.dtype)
        return self.emb(state + self.skip(conv_mean))
