"""The authors' fine-tuning input: prompt text, chat messages and the processor batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from qwen2_fixtures import RATE, tiny_qwen2_audio_processor, tone

from ser_lightning.alm import (
    DISTRIBUTION_SYSTEM_MESSAGE,
    distribution_conversation,
    distribution_prompt,
    qwen2_audio_inputs,
)

CLASSES = ("Anger", "Happiness", "Neutral state", "Sadness")

# Written out by hand from create_training_example in the authors' model_finetuning/train.py.
EXPECTED = (
    "Listen to the audio and analyze this speech utterance. Provide a probability distribution across all "
    "emotions in the VALID EMOTIONS LIST.\n"
    "\n"
    'Utterance: "I am so happy today"\n'
    "Speaker: Ses01F\n"
    "\n"
    "VALID EMOTIONS LIST: Anger, Happiness, Neutral state, Sadness\n"
    "\n"
    "Output MUST satisfy the following rules:\n"
    "Rule 1: Carefully analyze the emotional content in both the audio and the text.\n"
    "Rule 2: Pay attention to vocal tone, pitch, intensity, and speaking rate in the audio.\n"
    "Rule 3: Consider that emotions can be ambiguous and multiple emotions may be present simultaneously.\n"
    "Rule 4: ONLY use emotions from the VALID EMOTIONS LIST.\n"
    "Rule 5: Ensure the probabilities sum to 1.0.\n"
    "\n"
    "Provide your answer as a JSON dictionary with the EXACT emotion labels from Anger, Happiness, Neutral state, "
    "Sadness as keys and probabilities as values.\n"
    "\n"
    "For example: \n"
    "{\n"
    '"Anger": 0.6, \n'
    '"Happiness": 0.2, \n'
    '"Sadness": 0.2, \n'
    "}\n"
    "\n"
    "IMPORTANT: Output ONLY the JSON dictionary and NO OTHER TEXT."
)


def test_prompt_is_the_authors_text() -> None:
    assert distribution_prompt("  I am so happy today ", "Ses01F", CLASSES) == EXPECTED


@pytest.mark.parametrize("transcript", [None, "", "   "])
def test_missing_transcript_takes_the_audio_only_rule(transcript: str | None) -> None:
    prompt = distribution_prompt(transcript, "spk", CLASSES)
    assert "Utterance: \nSpeaker: spk\n" in prompt
    assert "Rule 1: This audio has no utterance. Rely solely on audio cues for analysis.\n" in prompt


def test_short_class_lists_and_errors() -> None:
    assert '"a": 0.6, \n"b": 0.2, \n"c": 0.2, \n}' in distribution_prompt("x", "s", ["a", "b", "c"])
    assert '"a": 0.6, \n"b": 0.4, \n}' in distribution_prompt("x", "s", ["a", "b"])
    with pytest.raises(ValueError, match="two classes"):
        distribution_prompt("x", "s", ["a"])


def test_conversation_is_system_then_text_then_audio() -> None:
    audio = tone(0.5)
    messages = distribution_conversation(audio, "hi", "spk", CLASSES)
    assert messages[0] == {"role": "system", "content": DISTRIBUTION_SYSTEM_MESSAGE}
    assert messages[0]["content"] == "You are an expert in emotion analysis who provides accurate emotion judgment."
    text, audio_part = messages[1]["content"]
    assert text["type"] == "text"
    assert text["text"] == distribution_prompt("hi", "spk", CLASSES)
    assert audio_part["type"] == "audio"
    assert audio_part["audio"] is audio


def test_processor_batch_carries_the_audio_right_padded() -> None:
    processor = tiny_qwen2_audio_processor()
    seconds = [1.0, 2.5]
    batch = qwen2_audio_inputs(
        processor, [tone(s) for s in seconds], ["i am so happy today", None], ["a", "b"], CLASSES, RATE
    )
    assert set(batch) >= {"input_ids", "attention_mask", "input_features", "feature_attention_mask"}
    frames = [int(s * RATE) // 160 for s in seconds]  # Whisper hop 160
    assert batch["feature_attention_mask"].sum(-1).tolist() == frames
    audio_id = processor.tokenizer.convert_tokens_to_ids("<|AUDIO|>")
    expected_tokens = [((((f - 1) // 2 + 1) - 2) // 2 + 1) for f in frames]  # API-NOTES: 4 s -> 100
    assert (batch["input_ids"] == audio_id).sum(-1).tolist() == expected_tokens
    mask = batch["attention_mask"]
    lengths = mask.sum(-1)
    assert torch.equal(mask, (torch.arange(mask.shape[1])[None] < lengths[:, None]).long())  # right padding
    assert int(lengths.min()) < mask.shape[1]
    assert batch["input_features"].shape == (2, 128, 3000)
    text = processor.tokenizer.decode(batch["input_ids"][0])
    assert text.count("<|im_start|>") == 3  # system, user, assistant (generation prompt)
    assert np.isfinite(batch["input_features"].numpy()).all()


def test_mismatched_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="2 audios, 1 transcripts"):
        qwen2_audio_inputs(tiny_qwen2_audio_processor(), [tone(1), tone(1)], ["x"], ["a", "b"], CLASSES, RATE)
