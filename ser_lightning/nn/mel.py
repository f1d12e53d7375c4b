"""A small log-mel convolutional audio encoder trained from scratch: the offline option when no SSL checkpoint exists.

It needs no download and learns prosody (pitch, energy, rate) fast on a CPU, which is what the demo
corpus carries. Loudness is kept: log-mels are standardised with running statistics over the corpus
(BatchNorm), not per utterance.
"""

from __future__ import annotations

from typing import Literal

import torch
import torchaudio
from torch import Tensor, nn

from ser_lightning.nn.pooling import AttentiveStatisticsPooling, MeanPooling


class MelEncoder(nn.Module):
    """Log-mel filterbank -> 1-D conv blocks -> pooling over valid frames.

    Args:
        sample_rate: input sample rate (Hz).
        n_mels: mel bands.
        hidden_dim: channels of the conv blocks.
        num_layers: number of conv blocks (kernel 5, stride 1 except a stride of 2 in every second block).
        pooling: ``attentive`` (attentive statistics, 2 x hidden_dim) or ``mean``.
        dropout: dropout after each block.
        utterance_norm: subtract each utterance's mean log-mel per band over its valid frames (cepstral mean
            normalisation) before the corpus-level BatchNorm: removes speaker timbre and recording level,
            keeps the utterance's pitch, energy and rate contours.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        n_mels: int = 64,
        hidden_dim: int = 128,
        num_layers: int = 4,
        pooling: Literal["attentive", "mean"] = "attentive",
        dropout: float = 0.1,
        utterance_norm: bool = False,
    ) -> None:
        super().__init__()
        self.sample_rate = sample_rate
        self.hop = sample_rate // 100  # 10 ms frames
        self.melspec = torchaudio.transforms.MelSpectrogram(
            sample_rate,
            n_fft=2 * self.hop * 2,
            win_length=self.hop * 5 // 2,
            hop_length=self.hop,
            n_mels=n_mels,
            pad_mode="constant",  # zero padding, like the batch padding: outputs do not depend on batch mates
        )
        self.utterance_norm = utterance_norm
        self.input_norm = nn.BatchNorm1d(n_mels)
        self.strides = [2 if i % 2 == 1 else 1 for i in range(num_layers)]
        blocks = []
        channels = n_mels
        for stride in self.strides:
            blocks.append(
                nn.Sequential(
                    nn.Conv1d(channels, hidden_dim, kernel_size=5, stride=stride, padding=2),
                    nn.BatchNorm1d(hidden_dim),
                    nn.ReLU(),
                    nn.Dropout(dropout),
                )
            )
            channels = hidden_dim
        self.blocks = nn.ModuleList(blocks)
        self.pooling = AttentiveStatisticsPooling(hidden_dim) if pooling == "attentive" else MeanPooling()
        self.output_dim = self.pooling.output_dim(hidden_dim)

    def frame_lengths(self, sample_lengths: Tensor) -> Tensor:
        """Valid mel frames for valid sample counts (centred STFT: ``len // hop + 1``)."""
        return sample_lengths // self.hop + 1

    def forward(self, audio: Tensor, audio_mask: Tensor) -> Tensor:
        """Pooled ``(B, output_dim)`` representation of ``(B, T)`` audio with a 0/1 validity mask."""
        lengths = self.frame_lengths(audio_mask.long().sum(-1))
        with torch.autocast(device_type=audio.device.type, enabled=False):
            mel = torch.log(self.melspec(audio.float()) + 1e-6)  # (B, n_mels, frames)
        frames = mel.shape[-1]
        mask = torch.arange(frames, device=audio.device)[None, :] < lengths[:, None]
        if self.utterance_norm:
            valid = mask[:, None, :].to(mel.dtype)
            mel = mel - (mel * valid).sum(-1, keepdim=True) / valid.sum(-1, keepdim=True).clamp_min(1)
        x = self.input_norm(mel) * mask[:, None, :]
        for block, stride in zip(self.blocks, self.strides, strict=True):
            x = block(x)
            if stride > 1:
                lengths = (lengths - 1) // stride + 1
            mask = torch.arange(x.shape[-1], device=x.device)[None, :] < lengths[:, None]
            x = x * mask[:, None, :]  # padded frames stay zero, so padding cannot leak into later blocks
        return self.pooling(x.transpose(1, 2), mask)
