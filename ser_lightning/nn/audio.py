"""Utterance embeddings from a self-supervised speech model (wav2vec2, WavLM, HuBERT, ...) of ``transformers``.

The encoder takes a zero-padded waveform batch ``(B, T)`` and its sample mask, and returns one vector per clip
pooled over the clip's valid frames only (AmbER² Sec. 4.2: frame-level embeddings, mean pooling across time).

Padding. The frame mask comes from the model's own ``_get_feat_extract_output_lengths`` of each clip's number
of valid samples. The attention mask goes into the model only for checkpoints whose convolutional feature
encoder uses layer norm (``config.feat_extract_norm == "layer"``: wav2vec2-large-lv60, WavLM-large, HuBERT-large,
...). Checkpoints with group norm (wav2vec2-base, WavLM-base(-plus), HuBERT-base) were trained without one and
must get zero padding and no mask (``Wav2Vec2FeatureExtractor``'s ``return_attention_mask`` docs); their
group norm also normalises each channel over the whole padded length, so for them padding changes the frame
states a little whatever one does. With a layer-norm checkpoint a padded batch gives the same embeddings as
one clip at a time.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Literal

import torch
from torch import Tensor, nn
from transformers import AutoConfig, AutoModel, PreTrainedModel

from ser_lightning.nn.pooling import AttentiveStatisticsPooling, MeanPooling
from ser_lightning.nn.pretrained import pretrained
from ser_lightning.nn.tc_gru import TCGRUPooling

AudioFreeze = Literal["none", "all", "feature_extractor", "below_layers"]
AudioPooling = Literal["mean", "attentive", "tc_gru"]
FREEZE_MODES = ("none", "all", "feature_extractor", "below_layers")
POOLING_MODES = ("mean", "attentive", "tc_gru")

_NORM_EPS = 1e-7  # as Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm


def tiny_audio_config(model_type: str = "wavlm", **overrides: Any) -> dict[str, Any]:
    """A tiny random configuration of an audio SSL model, for tests and the debug overlay.

    Hidden size 32, 2 layers and a 3-layer convolutional front end of stride 64 (1 s at 16 kHz -> 248
    frames). The feature encoder uses layer norm, as in the large checkpoints, so the model takes an attention
    mask and padding cannot change its outputs; layer drop is off.

    Args:
        model_type: a ``transformers`` model type with the wav2vec2 layout (``"wavlm"``, ``"wav2vec2"``,
            ``"hubert"``).
        **overrides: entries that replace or extend the defaults (e.g. ``feat_extract_norm="group"``).

    Returns:
        A plain dict for ``AudioEncoder(config=...)`` (``AutoConfig.for_model(**config)``).
    """
    config: dict[str, Any] = {
        "model_type": model_type,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 37,
        "conv_dim": (32, 32, 32),
        "conv_stride": (4, 4, 4),
        "conv_kernel": (8, 8, 8),
        "num_conv_pos_embeddings": 16,
        "num_conv_pos_embedding_groups": 2,
        "feat_extract_norm": "layer",
        "do_stable_layer_norm": True,
        "layerdrop": 0.0,
    }
    config.update(overrides)
    return config


def normalize_waveform(audio: Tensor, mask: Tensor) -> Tensor:
    """Zero mean, unit variance per clip over its valid samples; padded samples become 0.

    The same transform as ``Wav2Vec2FeatureExtractor(do_normalize=True)`` (population variance, eps 1e-7),
    computed in float32.

    Args:
        audio: ``(B, T)`` waveforms.
        mask: ``(B, T)`` with 1/``True`` on valid samples.

    Returns:
        ``(B, T)`` float32 normalised waveforms.
    """
    valid = mask.to(device=audio.device, dtype=torch.bool)
    audio = torch.where(valid, audio.float(), 0.0)
    count = valid.sum(dim=-1, keepdim=True).clamp(min=1)
    mean = audio.sum(dim=-1, keepdim=True) / count
    centred = torch.where(valid, audio - mean, 0.0)
    variance = centred.square().sum(dim=-1, keepdim=True) / count
    return centred / torch.sqrt(variance + _NORM_EPS)


def _build_backbone(
    model: str | None, config: dict[str, Any] | None, mask_time_prob: float | None, layerdrop: float | None
) -> PreTrainedModel:
    """Load a pretrained model or build a random one, with SpecAugment and layer drop set."""
    if (model is None) == (config is None):
        raise ValueError("give exactly one of `model` (hub id or local path) and `config` (dict for a random model)")
    overrides: dict[str, Any] = {"apply_spec_augment": bool(mask_time_prob)}
    if mask_time_prob:
        overrides["mask_time_prob"] = float(mask_time_prob)
    if layerdrop is not None:
        overrides["layerdrop"] = float(layerdrop)
    if config is not None:
        config = dict(config)
        model_type = config.pop("model_type", None)
        if model_type is None:
            raise ValueError("`config` needs a `model_type` entry, e.g. 'wavlm' or 'wav2vec2'")
        return AutoModel.from_config(AutoConfig.for_model(model_type, **{**config, **overrides}))
    config_ = pretrained(AutoConfig.from_pretrained, model, what="audio encoder config", **overrides)
    return pretrained(AutoModel.from_pretrained, model, what="audio encoder", config=config_)


class AudioEncoder(nn.Module):
    """A ``transformers`` audio SSL model followed by pooling over valid frames.

    The waveform is always normalised per clip over its valid samples (zero mean, unit variance), as the
    feature extractors of these checkpoints do with ``do_normalize=True``; the data pipeline should hand in raw
    waveforms at ``sample_rate``.

    Attributes:
        output_dim: size of the returned embedding (``hidden_size``, twice that with attentive pooling).
        sample_rate: the rate the model expects, 16 kHz.
        uses_attention_mask: whether the model receives the attention mask (layer-norm feature encoders).
    """

    sample_rate: int = 16000

    def __init__(
        self,
        model: str | None = None,
        config: dict[str, Any] | None = None,
        freeze: AudioFreeze = "feature_extractor",
        pooling: AudioPooling = "mean",
        pooling_options: dict[str, Any] | None = None,
        layer_weighted_sum: bool = False,
        mask_time_prob: float | None = None,
        layerdrop: float | None = 0.0,
    ) -> None:
        """Build the encoder.

        Args:
            model: hub id or local path of a pretrained checkpoint (``AutoModel.from_pretrained``), e.g.
                ``"microsoft/wavlm-base-plus"``. Exactly one of ``model`` and ``config``.
            config: a configuration dict with ``model_type`` for a randomly initialised model trained from
                scratch (``AutoConfig.for_model(**config)``); see ``tiny_audio_config``.
            freeze: ``"none"``: train everything; ``"feature_extractor"``: freeze the convolutional waveform
                encoder (the usual fine-tuning recipe); ``"all"``: freeze the whole SSL model (run without
                gradients; layer weights and pooling still train); ``"below_layers"``: freeze everything below
                the transformer layers (convolutional encoder, feature projection, positional convolution, the
                encoder's layer norm), the layers train (or are unfrozen on a schedule by
                :class:`~ser_lightning.callbacks.unfreezing.GradualUnfreezing`, paper 004). Frozen convolutional
                encoders stay in eval mode.
            pooling: ``"mean"`` over valid frames, ``"attentive"`` statistics pooling (mean and std), or
                ``"tc_gru"``: paper 004's temporal conv + GRU head (:class:`~ser_lightning.nn.tc_gru.TCGRUPooling`).
            pooling_options: keyword arguments of the pooling module (``tc_gru``: ``conv_channels``, ``gru_hidden``,
                ``gru_layers``, ``emb_dim``, ``dropout``, ...; ``attentive``: ``attention_dim``).
            layer_weighted_sum: pool a learned softmax-weighted sum of all hidden states (the embedding output
                and every layer) instead of the last layer.
            mask_time_prob: SpecAugment time-masking probability during training; ``None`` or 0 turns
                SpecAugment off (the default: its boolean indexing breaks ``torch.compile`` graphs).
            layerdrop: probability of skipping a transformer layer during training; 0 by default, since skipped
                layers leave parameters without gradients under DDP. ``None`` keeps the checkpoint's value.
        """
        super().__init__()
        if freeze not in FREEZE_MODES:
            raise ValueError(f"freeze must be one of {FREEZE_MODES}, got {freeze!r}")
        if pooling not in POOLING_MODES:
            raise ValueError(f"pooling must be one of {POOLING_MODES}, got {pooling!r}")
        if mask_time_prob is not None and not 0.0 <= mask_time_prob <= 1.0:
            raise ValueError(f"mask_time_prob must be in [0, 1], got {mask_time_prob}")
        if layerdrop is not None and not 0.0 <= layerdrop < 1.0:
            raise ValueError(f"layerdrop must be in [0, 1), got {layerdrop}")
        self.model = _build_backbone(model, config, mask_time_prob, layerdrop)
        self.source = model  # where the weights were loaded from (None: randomly initialised from `config`)
        if not hasattr(self.model, "_get_feat_extract_output_lengths"):
            raise TypeError(f"{type(self.model).__name__} is not a wav2vec2-style audio model (no frame lengths)")
        model_config = self.model.config
        self.freeze = freeze
        self.uses_attention_mask = getattr(model_config, "feat_extract_norm", "layer") == "layer"
        hidden_size = int(model_config.hidden_size)
        if layer_weighted_sum:
            if getattr(model_config, "add_adapter", False):
                raise ValueError("layer_weighted_sum cannot be used with an adapter (hidden states differ in length)")
            self.layer_weights: nn.Parameter | None = nn.Parameter(torch.zeros(model_config.num_hidden_layers + 1))
        else:
            self.layer_weights = None
        if getattr(model_config, "add_adapter", False):
            hidden_size = int(getattr(model_config, "output_hidden_size", None) or hidden_size)
        self.pooling = _pooling(pooling, hidden_size, dict(pooling_options or {}))
        self.output_dim = self.pooling.output_dim(hidden_size)
        self._freeze_parts(spec_augment=bool(mask_time_prob))

    def _freeze_parts(self, spec_augment: bool) -> None:
        """Turn off gradients of the frozen parts (and of the SpecAugment embedding when masking is off)."""
        if self.freeze == "all":
            self.model.requires_grad_(False)
        elif self.freeze == "below_layers":
            self.model.requires_grad_(False)
            self.transformer_layers().requires_grad_(True)
        elif self.freeze == "feature_extractor":
            if hasattr(self.model, "freeze_feature_encoder"):
                self.model.freeze_feature_encoder()
            elif hasattr(self.model, "feature_extractor"):
                self.model.feature_extractor.requires_grad_(False)
            else:
                raise ValueError(f"{type(self.model).__name__} has no `feature_extractor` to freeze")
        masked_spec_embed = getattr(self.model, "masked_spec_embed", None)
        if not spec_augment and isinstance(masked_spec_embed, nn.Parameter):
            masked_spec_embed.requires_grad_(False)  # unused without SpecAugment: would have no gradient in DDP
        self.train(self.training)

    def pretrained_source(self) -> dict[str, Any] | None:
        """``{"source", "module"}`` of the frozen pretrained part (left out of checkpoints), or None."""
        if self.source is None or self.freeze == "none":
            return None
        return {"source": self.source, "module": "model" if self.freeze == "all" else "model.feature_extractor"}

    def transformer_layers(self) -> nn.ModuleList:
        """The transformer layers, bottom first (``model.encoder.layers``): what gradual unfreezing unfreezes."""
        layers = getattr(getattr(self.model, "encoder", None), "layers", None)
        if not isinstance(layers, nn.ModuleList):
            raise TypeError(f"{type(self.model).__name__} has no encoder.layers")
        return layers

    def _frozen_modules(self) -> list[nn.Module]:
        if self.freeze == "all":
            return [self.model]
        if self.freeze in ("feature_extractor", "below_layers"):
            return [self.model.feature_extractor]
        return []

    def train(self, mode: bool = True) -> AudioEncoder:
        """Set train/eval mode; frozen parts always stay in eval mode."""
        super().train(mode)
        for module in self._frozen_modules():
            module.eval()
        return self

    def frame_lengths(self, sample_lengths: Tensor) -> Tensor:
        """Number of valid output frames for clips of ``sample_lengths`` valid samples (``(B,)`` long)."""
        return self.model._get_feat_extract_output_lengths(sample_lengths).to(torch.long)

    def frames(self, audio: Tensor, audio_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Frame-level states of a batch of right-padded waveforms, and which frames are valid.

        Args:
            audio: ``(B, T)`` float waveforms at ``sample_rate``, zero-padded on the right.
            audio_mask: ``(B, T)`` with 1 on valid samples (``None``: all valid).

        Returns:
            ``(B, F, hidden)`` states (the last layer's, or the learned layer mix) and the ``(B, F)`` bool frame mask.
        """
        if audio.dim() != 2:
            raise ValueError(f"expected audio of shape (B, T), got {tuple(audio.shape)}")
        valid = torch.ones_like(audio, dtype=torch.bool) if audio_mask is None else audio_mask.to(torch.bool)
        frame_lengths = self.frame_lengths(valid.sum(dim=-1))
        if bool((frame_lengths < 1).any()):
            raise ValueError(
                f"clip(s) too short for the encoder: {valid.sum(dim=-1)[frame_lengths < 1].tolist()} valid samples "
                "give no output frame"
            )
        inputs = normalize_waveform(audio, valid).to(self.model.dtype)
        attention_mask = valid.long() if self.uses_attention_mask else None
        with torch.no_grad() if self.freeze == "all" else nullcontext():
            outputs = self.model(
                inputs, attention_mask=attention_mask, output_hidden_states=self.layer_weights is not None
            )
        hidden = outputs.last_hidden_state if self.layer_weights is None else self._weighted_layers(outputs)
        frame_mask = torch.arange(hidden.shape[1], device=hidden.device) < frame_lengths.unsqueeze(-1)
        return hidden, frame_mask

    def forward(self, audio: Tensor, audio_mask: Tensor | None = None) -> Tensor:
        """Embed a batch of right-padded waveforms: ``(B, output_dim)``, pooled over each clip's valid frames."""
        return self.pooling(*self.frames(audio, audio_mask))

    def _weighted_layers(self, outputs: Any) -> Tensor:
        """Softmax-weighted sum of the embedding output and every layer's hidden states.

        The last entry is ``last_hidden_state``: for pre-norm ("stable layer norm") models transformers 5
        returns the last layer's output before the encoder's final layer norm, which would leave that norm out.
        """
        states = torch.stack((*outputs.hidden_states[:-1], outputs.last_hidden_state), dim=0)
        if states.shape[0] != self.layer_weights.shape[0]:
            raise RuntimeError(f"expected {self.layer_weights.shape[0]} hidden states, got {states.shape[0]}")
        weights = torch.softmax(self.layer_weights, dim=0).to(states.dtype)
        return torch.einsum("l,lbtd->btd", weights, states)


def _pooling(name: str, dim: int, options: dict[str, Any]) -> nn.Module:
    """The pooling module ``name`` over states of size ``dim``, built with ``options``."""
    if name == "mean":
        if options:
            raise ValueError(f"mean pooling takes no options, got {sorted(options)}")
        return MeanPooling()
    if name == "attentive":
        return AttentiveStatisticsPooling(dim, **options)
    return TCGRUPooling(dim, **options)
