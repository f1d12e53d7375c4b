"""Prediction heads and the gated audio-text fusion of AmbER² (Sec. 3.1 and 4.2)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn


class MLPHead(nn.Module):
    """Two linear layers with a ReLU between (AmbER² Sec. 4.2, "Network Parameters"): class logits or VAD values.

    ``style="layernorm_gelu"`` is the entropy-curriculum authors' head instead (``zahraomidi/MSP-PODCAST_WavLM``,
    ``hparams/wavlm_ser_example.yaml``: ``cat_mlp`` / ``vad_mlp``, hidden 256, dropout 0.2).
    Outputs are raw: the softmax that turns class logits into a distribution is left to the model or the loss
    (so losses can work on log-probabilities), and regression targets are scaled, not the head.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dim: int = 256,
        dropout: float = 0.1,
        style: Literal["relu", "layernorm_gelu"] = "relu",
    ) -> None:
        """Build ``Linear -> ReLU -> Dropout -> Linear`` (or ``Linear -> LayerNorm -> GELU -> Dropout -> Linear``).

        Args:
            in_dim: size of the input embedding.
            out_dim: number of outputs (classes for logits, 3 for arousal, valence and dominance).
            hidden_dim: size of the hidden layer.
            dropout: dropout after the activation.
            style: ``relu`` (AmbER²) or ``layernorm_gelu`` (paper 004's authors).
        """
        super().__init__()
        if min(in_dim, out_dim, hidden_dim) <= 0:
            raise ValueError(f"sizes must be positive, got in={in_dim}, hidden={hidden_dim}, out={out_dim}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.output_dim = out_dim
        if style == "relu":
            middle: list[nn.Module] = [nn.ReLU()]
        elif style == "layernorm_gelu":
            middle = [nn.LayerNorm(hidden_dim), nn.GELU()]
        else:
            raise ValueError(f"style must be 'relu' or 'layernorm_gelu', got {style!r}")
        layers = [nn.Linear(in_dim, hidden_dim), *middle, nn.Dropout(dropout), nn.Linear(hidden_dim, out_dim)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Map ``(B, in_dim)`` embeddings to ``(B, out_dim)`` raw outputs."""
        return self.net(x)


class GatedFusion(nn.Module):
    """Gated fusion of an audio and a text embedding (AmbER² Sec. 4.2), in the form of a gated multimodal unit.

    AmbER² says only that "the audio and text embeddings are concatenated and combined via a gated fusion
    mechanism". This is the gated multimodal unit of Arevalo et al. (ICLR-W 2017)::

        h_a' = tanh(W_a h_a + b_a),  h_t' = tanh(W_t h_t + b_t)        (projections to out_dim)
        g    = sigmoid(W_g [h_a ; h_t] + b_g)                          (element-wise gate from the concatenation)
        h    = g * h_a' + (1 - g) * h_t'

    ``g`` near 1 means the fused vector follows audio, near 0 text; ``gate`` exposes it for analysis.
    """

    def __init__(self, audio_dim: int, text_dim: int, out_dim: int) -> None:
        """Build the fusion.

        Args:
            audio_dim: size of the audio embedding.
            text_dim: size of the text embedding.
            out_dim: size of the fused embedding.
        """
        super().__init__()
        if min(audio_dim, text_dim, out_dim) <= 0:
            raise ValueError(f"sizes must be positive, got audio={audio_dim}, text={text_dim}, out={out_dim}")
        self.output_dim = out_dim
        self.audio_proj = nn.Linear(audio_dim, out_dim)
        self.text_proj = nn.Linear(text_dim, out_dim)
        self.gate_proj = nn.Linear(audio_dim + text_dim, out_dim)

    def gate(self, audio: Tensor, text: Tensor) -> Tensor:
        """The gate ``g`` ``(B, out_dim)`` in (0, 1): the weight of the audio projection."""
        return torch.sigmoid(self.gate_proj(torch.cat([audio, text], dim=-1)))

    def forward(self, audio: Tensor, text: Tensor) -> Tensor:
        """Fuse ``(B, audio_dim)`` and ``(B, text_dim)`` embeddings into ``(B, out_dim)``."""
        g = self.gate(audio, text)
        return g * torch.tanh(self.audio_proj(audio)) + (1.0 - g) * torch.tanh(self.text_proj(text))
