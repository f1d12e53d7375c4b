"""The Scaling Ambiguity prompts: the fine-tuning input (distribution prompt) and the synthetic annotation prompt.

The prompt text is the method, so it is kept verbatim from the authors' ``model_finetuning/train.py``
(``create_training_example`` for the prompt, ``EmotionDistributionDataset.__getitem__`` for the system message,
the text-then-audio order and ``add_generation_prompt=True``). Classes, transcripts and speakers come from the data.
The annotation prompt is Table 1 of the paper, laid out as the authors' ``synthetic_annotation_generation.ipynb``
(``create_iemocap_single_emotion_prompt``) does it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

DISTRIBUTION_SYSTEM_MESSAGE = "You are an expert in emotion analysis who provides accurate emotion judgment."

_NO_UTTERANCE = "This audio has no utterance. Rely solely on audio cues for analysis."
_WITH_UTTERANCE = "Carefully analyze the emotional content in both the audio and the text."

_TEMPLATE = """Listen to the audio and analyze this speech utterance. Provide a probability distribution across all \
emotions in the VALID EMOTIONS LIST.

Utterance: {transcript}
Speaker: {speaker}

VALID EMOTIONS LIST: {emotions}

Output MUST satisfy the following rules:
Rule 1: {rule1}
Rule 2: Pay attention to vocal tone, pitch, intensity, and speaking rate in the audio.
Rule 3: Consider that emotions can be ambiguous and multiple emotions may be present simultaneously.
Rule 4: ONLY use emotions from the VALID EMOTIONS LIST.
Rule 5: Ensure the probabilities sum to 1.0.

Provide your answer as a JSON dictionary with the EXACT emotion labels from {emotions} as keys and probabilities \
as values.

For example: \n{{
{example}}}

IMPORTANT: Output ONLY the JSON dictionary and NO OTHER TEXT."""


def _example_lines(classes: Sequence[str]) -> str:
    """The JSON example: the authors list classes 0, 1 and 3 at 0.6/0.2/0.2 (their sets have four classes)."""
    if len(classes) >= 4:
        pairs = [(classes[0], 0.6), (classes[1], 0.2), (classes[3], 0.2)]
    elif len(classes) == 3:  # not in the authors' code (it indexes class 3): the first three, same values
        pairs = [(classes[0], 0.6), (classes[1], 0.2), (classes[2], 0.2)]
    else:
        pairs = [(classes[0], 0.6), (classes[1], 0.4)]
    return "".join(f'"{name}": {value}, \n' for name, value in pairs)


def distribution_prompt(transcript: str | None, speaker: str, classes: Sequence[str]) -> str:
    """The authors' distribution prompt for one utterance; a missing or blank transcript gets their audio-only rule."""
    if len(classes) < 2:
        raise ValueError(f"the distribution prompt needs at least two classes, got {list(classes)}")
    has_text = transcript is not None and transcript.strip() != ""
    return _TEMPLATE.format(
        transcript=f'"{transcript.strip()}"' if has_text else "",
        speaker=speaker,
        emotions=", ".join(classes),
        rule1=_WITH_UTTERANCE if has_text else _NO_UTTERANCE,
        example=_example_lines(classes),
    )


def distribution_conversation(
    audio: np.ndarray, transcript: str | None, speaker: str, classes: Sequence[str]
) -> list[dict[str, Any]]:
    """The chat messages of one utterance: the system message, then the prompt text followed by the audio."""
    return [
        {"role": "system", "content": DISTRIBUTION_SYSTEM_MESSAGE},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": distribution_prompt(transcript, speaker, classes)},
                {"type": "audio", "audio": audio},
            ],
        },
    ]


def qwen2_audio_inputs(
    processor: Any,
    audios: Sequence[np.ndarray],
    transcripts: Sequence[str | None],
    speakers: Sequence[str],
    classes: Sequence[str],
    sampling_rate: int,
) -> Any:
    """Processor output for a batch: token ids and mask (right padded), mel features and their mask.

    The audio goes in with ``audio=`` (older releases dropped ``audios=`` silently), so the processor expands each
    ``<|AUDIO|>`` to as many tokens as the clip's valid mel frames give.
    """
    if not len(audios) == len(transcripts) == len(speakers):
        raise ValueError(f"got {len(audios)} audios, {len(transcripts)} transcripts and {len(speakers)} speakers")
    audios = [np.asarray(a, dtype=np.float32).reshape(-1) for a in audios]
    conversations = [
        distribution_conversation(a, t, s, classes) for a, t, s in zip(audios, transcripts, speakers, strict=True)
    ]
    return chat_inputs(processor, conversations, audios, sampling_rate, padding_side="right")


def chat_inputs(
    processor: Any,
    conversations: Sequence[list[dict[str, Any]]],
    audios: Sequence[np.ndarray],
    sampling_rate: int,
    padding_side: str = "right",
) -> Any:
    """Processor output for one chat per clip, padded to the longest on ``padding_side`` (``left`` for generation).

    Each chat goes through the chat template with the generation prompt added; the texts and clips then go through
    the processor together, the audio with ``audio=`` (older releases dropped ``audios=`` silently).
    """
    texts = [processor.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in conversations]
    return processor(
        text=texts,
        audio=list(audios),
        sampling_rate=sampling_rate,
        return_tensors="pt",
        padding="longest",
        padding_side=padding_side,
    )


def clip_at_rate(audio: np.ndarray, sample_rate: int, target_rate: int) -> np.ndarray:
    """A clip as float32 mono at ``target_rate`` (the feature extractor's), resampled by torchaudio when needed."""
    clip = np.asarray(audio, dtype=np.float32).reshape(-1)
    if int(sample_rate) == int(target_rate):
        return clip
    import torch
    import torchaudio.functional as AF  # noqa: N812

    return AF.resample(torch.as_tensor(clip), int(sample_rate), int(target_rate)).numpy()


# Synthetic annotation (Sec. 2.2, Table 1). The system instruction is the one of the authors' notebook
# (``call_gemini_with_audio`` in approximated_distribution_generation/synthetic_annotation_generation.ipynb).
ANNOTATION_SYSTEM_MESSAGE = "You are an expert in emotion analysis who provides accurate emotion judgments."

# Table 1's annotator persona set, in the paper's (and the notebook's ``focus_variations``) order.
PERSONAS: tuple[str, ...] = (
    "Focus on both vocal tone and linguistic content.",
    "Pay special attention to the speaker's tone of voice.",
    "Consider the word choice and phrasing in the utterance.",
    "Listen for subtle emotional cues in the voice.",
    "Analyze both what is said and how it is expressed.",
)

# Table 1 rows in order: task description, transcription, emotion categories, the numbered instructions (the
# persona second), output. The notebook's "Speaker:" line is not in Table 1 and annotation requests carry no speaker.
_ANNOTATION_TEMPLATE = """Listen to the audio and analyze this speech utterance. Think deeply and Select the ONE most \
dominant emotion present.

Transcript: {transcript}

Possible emotions: {emotions}

Instructions:
1. {rule1}
2. {persona}
3. Think deeply and Select ONLY ONE emotion from the list that best represents the dominant emotional state.
4. Respond with ONLY the emotion name, nothing else.

Which single emotion best describes this utterance? Select only from: {emotions}"""


def annotation_prompt(transcript: str | None, classes: Sequence[str], persona: int) -> str:
    """Table 1's single-label annotation prompt for one utterance, with persona ``PERSONAS[persona]``.

    A missing or blank transcript gets the authors' audio-only first instruction (their MSP-Podcast prompt).
    """
    if len(classes) < 2:
        raise ValueError(f"the annotation prompt needs at least two classes, got {list(classes)}")
    if not 0 <= persona < len(PERSONAS):
        raise ValueError(f"persona must index PERSONAS (0..{len(PERSONAS) - 1}), got {persona}")
    has_text = transcript is not None and transcript.strip() != ""
    return _ANNOTATION_TEMPLATE.format(
        transcript=f'"{transcript.strip()}"' if has_text else "",
        emotions=", ".join(classes),
        rule1=_WITH_UTTERANCE if has_text else _NO_UTTERANCE,
        persona=PERSONAS[persona],
    )


def annotation_conversation(
    audio: np.ndarray, transcript: str | None, classes: Sequence[str], persona: int
) -> list[dict[str, Any]]:
    """The chat messages of one annotation request: the notebook's system instruction, then prompt text and audio."""
    return [
        {"role": "system", "content": ANNOTATION_SYSTEM_MESSAGE},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": annotation_prompt(transcript, classes, persona)},
                {"type": "audio", "audio": audio},
            ],
        },
    ]
