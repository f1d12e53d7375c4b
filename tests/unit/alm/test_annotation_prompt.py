"""Table 1's synthetic annotation prompt and persona set."""

from __future__ import annotations

import numpy as np
import pytest

from ser_lightning.alm.prompts import ANNOTATION_SYSTEM_MESSAGE, PERSONAS, annotation_conversation, annotation_prompt

CLASSES = ("Anger", "Happiness", "Neutral state", "Sadness")

# Written out by hand from the paper's Table 1 (rows in order), numbered as in the authors' notebook.
EXPECTED = (
    "Listen to the audio and analyze this speech utterance. Think deeply and Select the ONE most dominant emotion "
    "present.\n"
    "\n"
    'Transcript: "I am so happy today"\n'
    "\n"
    "Possible emotions: Anger, Happiness, Neutral state, Sadness\n"
    "\n"
    "Instructions:\n"
    "1. Carefully analyze the emotional content in both the audio and the text.\n"
    "2. Listen for subtle emotional cues in the voice.\n"
    "3. Think deeply and Select ONLY ONE emotion from the list that best represents the dominant emotional state.\n"
    "4. Respond with ONLY the emotion name, nothing else.\n"
    "\n"
    "Which single emotion best describes this utterance? Select only from: Anger, Happiness, Neutral state, Sadness"
)


def test_prompt_is_table_1_verbatim() -> None:
    assert annotation_prompt("  I am so happy today ", CLASSES, 3) == EXPECTED


def test_personas_are_table_1_in_order() -> None:
    assert PERSONAS == (
        "Focus on both vocal tone and linguistic content.",
        "Pay special attention to the speaker's tone of voice.",
        "Consider the word choice and phrasing in the utterance.",
        "Listen for subtle emotional cues in the voice.",
        "Analyze both what is said and how it is expressed.",
    )


@pytest.mark.parametrize("persona", range(5))
def test_each_persona_is_instruction_2(persona: int) -> None:
    lines = annotation_prompt("hello", CLASSES, persona).splitlines()
    assert lines[lines.index("Instructions:") + 2] == f"2. {PERSONAS[persona]}"
    assert sum(p in "\n".join(lines) for p in PERSONAS) == 1


@pytest.mark.parametrize("transcript", [None, "", "   "])
def test_missing_transcript_gets_the_audio_only_rule(transcript: str | None) -> None:
    prompt = annotation_prompt(transcript, CLASSES, 0)
    assert "Transcript: \n" in prompt
    assert "1. This audio has no utterance. Rely solely on audio cues for analysis.\n" in prompt
    assert "both the audio and the text" not in prompt


@pytest.mark.parametrize("persona", [-1, 5, 7])
def test_persona_out_of_range_is_an_error(persona: int) -> None:
    with pytest.raises(ValueError, match="persona"):
        annotation_prompt("hi", CLASSES, persona)


def test_one_class_is_an_error() -> None:
    with pytest.raises(ValueError, match="two classes"):
        annotation_prompt("hi", ("Anger",), 0)


def test_conversation_is_system_then_text_then_audio() -> None:
    audio = np.zeros(160, dtype=np.float32)
    messages = annotation_conversation(audio, "hi", CLASSES, 1)
    assert messages[0] == {"role": "system", "content": ANNOTATION_SYSTEM_MESSAGE}
    assert ANNOTATION_SYSTEM_MESSAGE == "You are an expert in emotion analysis who provides accurate emotion judgments."
    text, clip = messages[1]["content"]
    assert text == {"type": "text", "text": annotation_prompt("hi", CLASSES, 1)}
    assert clip["type"] == "audio"
    assert clip["audio"] is audio
