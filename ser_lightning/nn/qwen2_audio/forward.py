"""Qwen2-Audio's forward up to the language model's last hidden states, with the audio encoder on valid frames only.

The stock ``Qwen2AudioModel.forward`` runs the Whisper-style encoder over 3000 mel frames (30 s) whatever the
clip's length and then masks the padded positions; ``Qwen2AudioForConditionalGeneration`` adds ``lm_head`` over
the whole vocabulary. A distribution head needs neither: :func:`encode_audio` runs the encoder's own layers on the
batch's longest valid length (plus the two frames its convolutions look ahead) and :func:`language_hidden_states`
scatters the audio features into the ``<|AUDIO|>`` positions exactly as the stock forward does (transformers 5.x,
``Qwen2AudioModel.forward``, processor-expanded path) and runs only the language model's base.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from transformers import Qwen2AudioForConditionalGeneration
from transformers.masking_utils import create_bidirectional_mask
from transformers.models.qwen2_audio.modeling_qwen2_audio import Qwen2AudioEncoder, Qwen2AudioModel

if TYPE_CHECKING:
    from ser_lightning.nn.qwen2_audio.cache import EncoderCache

# Mel frames past the last valid one that the valid outputs see: conv1 (k=3) and conv2 (k=3, stride 2) each look one
# frame ahead, so the last valid conv2 output reads mel frames up to index T + 1.
_LOOKAHEAD_FRAMES = 2
_FRAME_MULTIPLE = 8  # trimmed lengths rounded up so shapes repeat across batches


def qwen2_audio_core(model: nn.Module) -> Qwen2AudioModel:
    """The ``Qwen2AudioModel`` (audio tower, projector, language model) inside a plain or peft-wrapped model."""
    if hasattr(model, "get_base_model"):  # peft.PeftModel
        model = model.get_base_model()
    if isinstance(model, Qwen2AudioForConditionalGeneration):
        return model.model
    if isinstance(model, Qwen2AudioModel):
        return model
    raise TypeError(f"expected a Qwen2-Audio model (optionally peft-wrapped), got {type(model).__name__}")


def audio_output_lengths(feature_lengths: Tensor) -> Tensor:
    """Audio tokens for ``feature_lengths`` valid mel frames: conv2 (stride 2) then average pooling (stride 2)."""
    conv_lengths = (feature_lengths - 1) // 2 + 1
    return (conv_lengths - 2) // 2 + 1


def encoder_requires_grad(audio_tower: nn.Module) -> bool:
    """Whether any encoder parameter trains (LoRA on the encoder): then the encoder runs with autograd and uncached."""
    return any(p.requires_grad for p in audio_tower.parameters())


def encode_audio(
    audio_tower: Qwen2AudioEncoder, input_features: Tensor, feature_attention_mask: Tensor, *, trim: bool = True
) -> list[Tensor]:
    """Encoder outputs per sample, ``(num_audio_tokens_i, d_model)``, before the multimodal projector.

    Args:
        audio_tower: ``Qwen2AudioModel.audio_tower``.
        input_features: ``(B, num_mel_bins, 3000)`` log-mel features as the processor pads them.
        feature_attention_mask: ``(B, 3000)``, 1 on valid frames.
        trim: run on the batch's longest valid length (the fast path); ``False`` runs the stock padded forward.
    """
    lengths = feature_attention_mask.sum(-1).to(torch.long)
    grad = torch.enable_grad() if encoder_requires_grad(audio_tower) else torch.no_grad()
    with grad:
        if trim:
            hidden = _encode_trimmed(audio_tower, input_features, lengths)
        else:
            hidden = _encode_padded(audio_tower, input_features, lengths)
    counts = audio_output_lengths(lengths).tolist()
    return [hidden[i, :n] for i, n in enumerate(counts)]


def _encoder_mask(audio_tower: Qwen2AudioEncoder, hidden: Tensor, conv_lengths: Tensor) -> Tensor | None:
    """The encoder's key-padding mask in its attention implementation's form, built as the stock forward does."""
    positions = torch.arange(hidden.shape[1], device=hidden.device)
    mask_2d = (positions[None, :] < conv_lengths.to(hidden.device)[:, None]).to(torch.long)
    dummy = torch.zeros((*hidden.shape[:2], 1), dtype=hidden.dtype, device=hidden.device)
    return create_bidirectional_mask(config=audio_tower.config, inputs_embeds=dummy, attention_mask=mask_2d)


def _encode_trimmed(audio_tower: Qwen2AudioEncoder, input_features: Tensor, lengths: Tensor) -> Tensor:
    """``Qwen2AudioEncoder.forward`` on the first ``max(lengths) + 2`` frames, positional embeddings sliced to match."""
    total = input_features.shape[-1]
    frames = int(lengths.max()) + _LOOKAHEAD_FRAMES
    frames = min(total, -(-frames // _FRAME_MULTIPLE) * _FRAME_MULTIPLE)
    weight = audio_tower.conv1.weight
    x = input_features[..., :frames].to(dtype=weight.dtype, device=weight.device)
    x = nn.functional.gelu(audio_tower.conv1(x))
    x = nn.functional.gelu(audio_tower.conv2(x)).permute(0, 2, 1)
    x = x + audio_tower.embed_positions.weight[: x.shape[1]]
    x = nn.functional.dropout(x, p=audio_tower.dropout, training=audio_tower.training)
    mask = _encoder_mask(audio_tower, x, (lengths - 1) // 2 + 1)
    for layer in audio_tower.layers:
        if audio_tower.training and audio_tower.layerdrop > 0.0 and torch.rand([]) < audio_tower.layerdrop:
            continue  # LayerDrop, as the stock forward
        x = layer(x, mask)
    x = audio_tower.avg_pooler(x.permute(0, 2, 1)).permute(0, 2, 1)
    return audio_tower.layer_norm(x)


def _encode_padded(audio_tower: Qwen2AudioEncoder, input_features: Tensor, lengths: Tensor) -> Tensor:
    """The stock padded encoder call of ``Qwen2AudioModel.forward`` (30 s of frames, padded keys masked)."""
    conv_frames = (input_features.shape[-1] - 2) // 2 + 1
    weight = audio_tower.conv1.weight
    dummy = torch.zeros((input_features.shape[0], conv_frames, 1), dtype=weight.dtype, device=weight.device)
    mask = _encoder_mask(audio_tower, dummy, (lengths - 1) // 2 + 1)
    return audio_tower(input_features, attention_mask=mask).last_hidden_state


def merge_audio_embeddings(
    core: Qwen2AudioModel, input_ids: Tensor, audio_features: list[Tensor] | Tensor
) -> Tensor:
    """Token embeddings with the projected audio features written into the ``<|AUDIO|>`` positions, in batch order.

    ``audio_features`` are encoder outputs (one ``(n_i, d_model)`` tensor per sample, or already packed);
    their total length must equal the number of audio tokens in ``input_ids`` (the processor expands them).
    """
    embeds = core.get_input_embeddings()(input_ids)
    packed = torch.cat(list(audio_features)) if isinstance(audio_features, list | tuple) else audio_features
    audio_mask = input_ids == core.config.audio_token_id
    n_tokens = int(audio_mask.sum())
    if n_tokens != packed.shape[0]:
        raise ValueError(
            f"{n_tokens} <|AUDIO|> tokens in input_ids but {packed.shape[0]} audio features: the processor must expand "
            "the audio token (call it with audio=, not audios=) over the same features"
        )
    projector = core.multi_modal_projector
    projected = projector(packed.to(device=projector.linear.weight.device, dtype=projector.linear.weight.dtype))
    projected = projected.to(device=embeds.device, dtype=embeds.dtype)
    return embeds.masked_scatter(audio_mask.unsqueeze(-1).to(embeds.device), projected)


def language_hidden_states(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, audio_features: list[Tensor] | Tensor
) -> Tensor:
    """The language model's last hidden states ``(B, T, H)`` for a right-padded batch; no ``lm_head``, no KV cache."""
    core = qwen2_audio_core(model)
    embeds = merge_audio_embeddings(core, input_ids, audio_features)
    out = core.language_model(inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False)
    return out.last_hidden_state


def qwen2_audio_hidden_states(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    input_features: Tensor,
    feature_attention_mask: Tensor,
    *,
    ids: Sequence[str] | None = None,
    augmented: Sequence[bool] | Tensor | None = None,
    cache: EncoderCache | None = None,
    trim: bool = True,
) -> Tensor:
    """Last hidden states ``(B, T, H)`` of the language model for a right-padded processor batch.

    The encoder runs on valid frames only (``trim``), its outputs come from ``cache`` for un-augmented samples
    when one is given (keyed by ``ids``), and no ``lm_head`` is applied.
    """
    core = qwen2_audio_core(model)
    if cache is None:
        audio = encode_audio(core.audio_tower, input_features, feature_attention_mask, trim=trim)
    else:
        if ids is None:
            raise ValueError("the encoder cache needs the utterance ids of the batch")
        audio = cache.encode(
            core.audio_tower, input_features, feature_attention_mask, ids=ids, augmented=augmented, trim=trim
        )
    return language_hidden_states(model, input_ids, attention_mask, audio)
