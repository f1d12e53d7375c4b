"""Appendix Tables 1-3: the zero-shot, CoT and verifier prompts and their chat messages."""

from __future__ import annotations

import numpy as np
import pytest
from qwen2_fixtures import tiny_qwen2_audio_processor

from ser_lightning.alm import (
    IEMOCAP_BACKGROUND,
    verifier_conversation,
    verifier_prompt,
    zeroshot_conversation,
    zeroshot_prompt,
)

CLASSES = ["Neutral state", "Happiness", "Anger", "Sadness"]
TRANSCRIPT = "Yeah. I suppose I have been. But it's going from me."

# Written out by hand from Appendix Table 1 (IEMOCAP example), one labelled row per table row.
TABLE1 = (
    "Background: Two speakers are having a conversation.\n"
    "Target Utterance: Yeah. I suppose I have been. But it's going from me.\n"
    "Task: Predict the probability distribution of emotions for the target utterance from the following options: "
    "['Neutral state', 'Happiness', 'Anger', 'Sadness'].\n"
    "Consider both the context and acoustic features.\n"
    "Output Constraints:\n"
    '1. Generate EXACTLY this JSON structure: {"Neutral state":float, ...}\n'
    "Before outputting, check if the format of your output is in accordance with the requirements I provided.\n"
    "2. Sum of probabilities must equal to 1.0.\n"
    "3. Do not include any explanations or text besides the dictionary."
)

# Appendix Table 2: Table 1 with the CoT Instructions row between Task and Output Constraints.
TABLE2 = (
    "Background: Two speakers are having a conversation.\n"
    "Target Utterance: Yeah. I suppose I have been. But it's going from me.\n"
    "Task: Predict the probability distribution of emotions for the target utterance from the following options: "
    "['Neutral state', 'Happiness', 'Anger', 'Sadness'].\n"
    "Consider both the context and acoustic features.\n"
    "CoT Instructions:\n"
    "- First, carefully listen to the tone, intonation, pauses, vocal energy, and other acoustic features.\n"
    "- Second, examine the textual content, considering words, sentiment, and contextual cues.\n"
    "- Identify all emotional cues, even subtle ones.\n"
    "- For each emotion, evaluate if it is present. If multiple are present, estimate their relative strength and "
    "presence.\n"
    "Output Constraints:\n"
    '1. Generate EXACTLY this JSON structure: {"Neutral state":float, ...}\n'
    "Before outputting, check if the format of your output is in accordance with the requirements I provided.\n"
    "2. Sum of probabilities must equal to 1.0.\n"
    "3. Do not include any explanations or text besides the dictionary."
)

CANDIDATE = '```json\n{"Neutral state": 0.6, "Sadness": 0.4}\n```'

# Appendix Table 3 with the Table 1 context as the user prompt.
TABLE3 = (
    "Background: You are evaluating a model's prediction for an emotion distribution task.\n"
    "Role: User\n"
    "User Prompt:\n"
    "Background: Two speakers are having a conversation.\n"
    "Target Utterance: Yeah. I suppose I have been. But it's going from me.\n"
    "Task: Predict the probability distribution of emotions for the target utterance from the following options: "
    "['Neutral state', 'Happiness', 'Anger', 'Sadness'].\n"
    "Consider both the context and acoustic features.\n"
    "Model Output:\n"
    '```json\n{"Neutral state": 0.6, "Sadness": 0.4}\n```\n'
    "Task: Only scoring based on emotion content: how well does the distribution reflect the emotional content of "
    "the utterance and context?\n"
    "Scoring Guide:\n"
    "- 0.0\u20130.3: Clearly wrong or unrelated\n"
    "- 0.4\u20130.7: Partially reasonable or somewhat mismatched\n"
    "- 0.8\u20131.0: Good match to the expected emotional distribution\n"
    "- Reply ONLY with a number between 0.0 and 1.0."
)


def test_table1_prompt() -> None:
    assert IEMOCAP_BACKGROUND == "Two speakers are having a conversation."
    assert zeroshot_prompt(TRANSCRIPT, CLASSES) == TABLE1
    assert zeroshot_prompt(f"  {TRANSCRIPT}\n", tuple(CLASSES)) == TABLE1


def test_table2_cot_prompt() -> None:
    assert zeroshot_prompt(TRANSCRIPT, CLASSES, cot=True) == TABLE2


def test_audio_target_is_the_crema_d_wording() -> None:
    prompt = zeroshot_prompt(None, ["Anger", "Disgust", "Fear", "Happy", "Neutral", "Sad"], target="audio")
    assert (
        "Task: Predict the probability distribution of emotions for the audio from the following options: "
        "['Anger', 'Disgust', 'Fear', 'Happy', 'Neutral', 'Sad'].\n" in prompt
    )
    assert "target utterance" not in prompt
    assert '1. Generate EXACTLY this JSON structure: {"Anger":float, ...}\n' in prompt


@pytest.mark.parametrize("transcript", [None, "", "  \n"])
def test_missing_transcript_drops_the_target_utterance_row(transcript: str | None) -> None:
    expected = TABLE1.replace("Target Utterance: Yeah. I suppose I have been. But it's going from me.\n", "")
    assert zeroshot_prompt(transcript, CLASSES) == expected
    assert "Target Utterance" not in verifier_prompt(transcript, CLASSES, "{}")


def test_no_background_drops_the_background_row() -> None:
    prompt = zeroshot_prompt(TRANSCRIPT, CLASSES, background=None)
    assert prompt == TABLE1.removeprefix("Background: Two speakers are having a conversation.\n")
    custom = zeroshot_prompt(TRANSCRIPT, CLASSES, background="A podcast host is speaking.")
    assert custom.startswith("Background: A podcast host is speaking.\nTarget Utterance: ")


@pytest.mark.parametrize(("kwargs", "match"), [({"target": "speech"}, "target"), ({}, "two classes")])
def test_bad_arguments_raise(kwargs: dict, match: str) -> None:
    classes = CLASSES if kwargs else ["Anger"]
    with pytest.raises(ValueError, match=match):
        zeroshot_prompt(TRANSCRIPT, classes, **kwargs)
    with pytest.raises(ValueError, match=match):
        verifier_prompt(TRANSCRIPT, classes, "{}", **kwargs)


def test_table3_verifier_prompt() -> None:
    prompt = verifier_prompt(TRANSCRIPT, CLASSES, CANDIDATE)
    assert prompt == TABLE3
    assert CANDIDATE in prompt
    assert prompt.endswith("Reply ONLY with a number between 0.0 and 1.0.")


def test_verifier_prompt_audio_target_and_no_background() -> None:
    prompt = verifier_prompt(None, CLASSES, "Sadness", target="audio", background=None)
    assert prompt.startswith(
        "Background: You are evaluating a model's prediction for an emotion distribution task.\n"
        "Role: User\n"
        "User Prompt:\n"
        "Task: Predict the probability distribution of emotions for the audio from the following options: "
    )
    assert "Model Output:\nSadness\nTask: Only scoring" in prompt
    assert "Two speakers" not in prompt


def test_conversations_put_audio_first_and_no_system_message() -> None:
    audio = np.zeros(1600, dtype=np.float32)
    messages = zeroshot_conversation(audio, TRANSCRIPT, CLASSES, cot=True)
    assert len(messages) == 1
    assert messages[0]["role"] == "user"
    audio_part, text_part = messages[0]["content"]
    assert audio_part["type"] == "audio"
    assert audio_part["audio"] is audio
    assert text_part == {"type": "text", "text": TABLE2}

    messages = verifier_conversation(audio, TABLE3)
    assert [m["role"] for m in messages] == ["user"]
    assert messages[0]["content"][0]["audio"] is audio
    assert messages[0]["content"][1] == {"type": "text", "text": TABLE3}


def test_chat_template_renders_audio_then_prompt_with_default_system_message() -> None:
    processor = tiny_qwen2_audio_processor()
    messages = verifier_conversation(np.zeros(1600, dtype=np.float32), TABLE3)
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        f"<|im_start|>user\nAudio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\n{TABLE3}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
