"""A randomly initialised Qwen2-Audio and a processor built without any download, for tests, debug runs and benchmarks.

``random_qwen2_audio({})`` is the 7B architecture (``Qwen2AudioConfig()``'s defaults are the 7B sizes), built
directly on ``device`` so ``--random-init`` benchmarks need no weights; :data:`TINY_QWEN2_AUDIO_CONFIG` is the
tiny one of API-NOTES (hidden 32, 2 layers), its encoder sized for the real Whisper feature extractor (128 mel bins,
``max_source_positions=1500`` = 30 s) so the processor pads, counts audio tokens and expands ``<|AUDIO|>`` exactly
as the hub's does. The offline tokenizer is word level: the words of the authors' prompt, a few transcripts and
class names, everything else ``<unk>``; its special tokens sit at Qwen's ids when the vocabulary is large enough.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2AudioConfig,
    Qwen2AudioForConditionalGeneration,
    Qwen2AudioProcessor,
    WhisperFeatureExtractor,
)

from ser_lightning.nn.qwen2_audio.loading import as_dtype, enable_checkpointing

SAMPLING_RATE = 16000
UNK = "<unk>"
# Qwen2's special tokens and their ids in the hub tokenizer (Qwen2AudioConfig().audio_token_index == 151646).
QWEN_SPECIAL_IDS = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<|AUDIO|>": 151646,
    "<|audio_bos|>": 151647,
    "<|audio_eos|>": 151648,
}
# Words of the authors' prompt, a few transcripts and class names: anything else maps to <unk>.
WORDS = tuple(
    dict.fromkeys(
        (
            "listen to the audio and analyze this speech utterance provide a probability distribution across all "
            "emotions in valid list speaker output must satisfy following rules rule carefully emotional content both "
            "text pay attention vocal tone pitch intensity speaking rate consider that can be ambiguous multiple may "
            "present simultaneously only use from ensure probabilities sum answer as json dictionary with exact "
            "emotion labels keys values for example important no other has rely solely on cues system user assistant "
            "you are an expert who anger happiness neutral sadness i am so happy today leave me alone "
            # the emotion names of the corpora's class sets (ALM zero-shot and exact tests need known first tokens)
            "angry disgust fear sad surprise contempt float"
        ).split()
    )
)
PUNCT = tuple(":.,{}\"'!?-()")

# The tiny test / debug model (API-NOTES); token ids are filled in by random_qwen2_audio from the vocabulary size.
TINY_QWEN2_AUDIO_CONFIG: dict[str, Any] = {
    "text_config": {
        "model_type": "qwen2",
        "vocab_size": 128,
        "hidden_size": 32,
        "intermediate_size": 36,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
    },
    "audio_config": {
        "model_type": "qwen2_audio_encoder",
        "d_model": 16,
        "encoder_attention_heads": 4,
        "encoder_ffn_dim": 16,
        "encoder_layers": 2,
        "num_mel_bins": 128,
        "max_source_positions": 1500,
    },
}


def offline_vocabulary(vocab_size: int) -> dict[str, int]:
    """Token -> id of the offline tokenizer: Qwen's special ids when ``vocab_size`` holds them, else packed first."""
    words = (*WORDS, *PUNCT)
    if vocab_size > max(QWEN_SPECIAL_IDS.values()):
        return {UNK: 0, **{w: i + 1 for i, w in enumerate(words)}, **QWEN_SPECIAL_IDS}
    vocab = {tok: i for i, tok in enumerate((UNK, *QWEN_SPECIAL_IDS, *words))}
    if len(vocab) > vocab_size:
        raise ValueError(f"the offline tokenizer needs a vocabulary of at least {len(vocab)}, got {vocab_size}")
    return vocab


def offline_token_ids(vocab_size: int) -> dict[str, int]:
    """The config's ``audio_token_index`` and the text model's ``pad_token_id`` for the offline tokenizer."""
    vocab = offline_vocabulary(vocab_size)
    return {"audio_token_index": vocab["<|AUDIO|>"], "pad_token_id": vocab["<|endoftext|>"]}


def offline_qwen2_audio_processor(num_mel_bins: int = 128, vocab_size: int = 128) -> Qwen2AudioProcessor:
    """A Qwen2AudioProcessor built without any download: the real Whisper extractor and a word-level tokenizer.

    The chat template is the processor's default, the hub's Qwen2-Audio-Instruct template. The tokenizer pads
    right (as :func:`~ser_lightning.nn.qwen2_audio.loading.load_processor` sets it).

    Args:
        num_mel_bins: mel bins of the feature extractor; must equal the encoder's ``num_mel_bins`` (128 in the 7B).
        vocab_size: the language model's vocabulary size (``Qwen2AudioConfig().text_config.vocab_size`` for the 7B).
    """
    backend = Tokenizer(models.WordLevel(vocab=offline_vocabulary(vocab_size), unk_token=UNK))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = qwen_tokenizer(backend)
    extractor = WhisperFeatureExtractor(feature_size=num_mel_bins, sampling_rate=SAMPLING_RATE)
    return Qwen2AudioProcessor(feature_extractor=extractor, tokenizer=tokenizer)


def random_config(config: Mapping[str, Any] | None = None) -> Qwen2AudioConfig:
    """``Qwen2AudioConfig(**config)`` (``None`` or ``{}``: the 7B sizes), token ids matching the offline tokenizer."""
    kwargs = copy.deepcopy(dict(config or {}))
    text = dict(kwargs.pop("text_config", None) or {})
    text.setdefault("model_type", "qwen2")
    vocab_size = int(text.get("vocab_size", Qwen2AudioConfig().text_config.vocab_size))
    ids = offline_token_ids(vocab_size)
    text.setdefault("pad_token_id", ids["pad_token_id"])
    kwargs.setdefault("audio_token_index", ids["audio_token_index"])
    return Qwen2AudioConfig(text_config=text, **kwargs)


def random_qwen2_audio(
    config: Mapping[str, Any] | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str = torch.float32,
    seed: int | None = None,
) -> Qwen2AudioForConditionalGeneration:
    """A randomly initialised Qwen2-Audio (eval mode), built on ``device`` in ``dtype`` without a CPU copy.

    The parameters are allocated and initialised under ``torch.device(device)`` (the 7B takes seconds on a GPU and
    never lives in host memory); buffers computed at construction (rotary frequencies) stay valid, which a
    meta-device build followed by ``to_empty`` would lose.

    Args:
        config: ``Qwen2AudioConfig`` keyword arguments (``text_config`` / ``audio_config`` dicts); ``None`` or ``{}``
            gives the 7B architecture. Token ids default to the offline processor's (:func:`random_config`).
        device: where to build (default: the current default device, normally the CPU).
        dtype: parameter dtype.
        seed: ``torch.manual_seed`` before initialisation, for reproducible weights.
    """
    cfg = random_config(config)
    dtype = as_dtype(dtype)
    if seed is not None:
        torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device if device is not None else torch.get_default_device()):
            model = Qwen2AudioForConditionalGeneration(cfg)
    finally:
        torch.set_default_dtype(previous)
    return model.to(dtype).eval()


def build_random_qwen2_audio(
    config: Mapping[str, Any] | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str = torch.bfloat16,
    gradient_checkpointing: bool = False,
    seed: int | None = None,
) -> tuple[Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor]:
    """A random model, frozen, with its offline processor: what ``load_qwen2_audio`` returns for a hub model."""
    model = random_qwen2_audio(config, device=device, dtype=dtype, seed=seed)
    sizes = model.config
    processor = offline_qwen2_audio_processor(sizes.audio_config.num_mel_bins, sizes.text_config.vocab_size)
    model.requires_grad_(False)
    if gradient_checkpointing:
        enable_checkpointing(model)
    return model, processor


def offline_processor_sizes(config: Mapping[str, Any] | None) -> dict[str, int]:
    """``num_mel_bins`` and ``vocab_size`` the offline processor of a ``random_config`` needs (unset: the 7B's)."""
    text = (config or {}).get("text_config") or {}
    audio = (config or {}).get("audio_config") or {}
    return {
        "num_mel_bins": int(audio.get("num_mel_bins", 128)),
        "vocab_size": int(text.get("vocab_size", Qwen2AudioConfig().text_config.vocab_size)),
    }


def qwen_tokenizer(backend: Tokenizer) -> PreTrainedTokenizerFast:
    """A fast tokenizer over ``backend`` with Qwen2-Audio's special tokens (pad, end of turn, audio markers)."""
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token=UNK,
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        additional_special_tokens=[t for t in QWEN_SPECIAL_IDS if t not in ("<|endoftext|>", "<|im_end|>")],
        padding_side="right",
    )
