"""The zero-shot, CoT and verifier prompts of the ALM benchmark (paper 003, Appendix Tables 1-3), kept verbatim.

The prompt text is the method. The tables give rows (Background, Target Utterance, Task, CoT Instructions, Output
Constraints); here each row is a labelled section, in the table's order, one per line, with list items on their own
lines. The paper has no code, so two choices are ours: the chat messages put the audio before the text, as
Qwen2-Audio-Instruct's model card does, and carry no system message (the hub chat template then adds its default
one, "You are a helpful assistant.").
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "IEMOCAP_BACKGROUND",
    "verifier_conversation",
    "verifier_prompt",
    "zeroshot_conversation",
    "zeroshot_prompt",
]

IEMOCAP_BACKGROUND = "Two speakers are having a conversation."

# A.1: CREMA-D's emotion is in the actor's delivery, so its prompt asks about "the audio".
_TARGETS = {"utterance": "the target utterance", "audio": "the audio"}

# Table 2's "CoT Instructions" row.
_COT = (
    "First, carefully listen to the tone, intonation, pauses, vocal energy, and other acoustic features.",
    "Second, examine the textual content, considering words, sentiment, and contextual cues.",
    "Identify all emotional cues, even subtle ones.",
    "For each emotion, evaluate if it is present. If multiple are present, estimate their relative strength and "
    "presence.",
)

# Table 3's fixed rows.
_VERIFIER_BACKGROUND = "You are evaluating a model's prediction for an emotion distribution task."
_VERIFIER_TASK = (
    "Only scoring based on emotion content: how well does the distribution reflect the emotional content of the "
    "utterance and context?"
)
_SCORING_GUIDE = (
    "0.0\u20130.3: Clearly wrong or unrelated",
    "0.4\u20130.7: Partially reasonable or somewhat mismatched",
    "0.8\u20131.0: Good match to the expected emotional distribution",
    "Reply ONLY with a number between 0.0 and 1.0.",
)


def _context_rows(
    transcript: str | None, classes: Sequence[str], target: str, background: str | None
) -> list[str]:
    """Table 1's Background, Target Utterance and Task rows (the first two only when given)."""
    if target not in _TARGETS:
        raise ValueError(f"target must be 'utterance' or 'audio', got {target!r}")
    if len(classes) < 2:
        raise ValueError(f"the prompt needs at least two classes, got {list(classes)}")
    rows = []
    if background is not None:
        rows.append(f"Background: {background}")
    if transcript is not None and transcript.strip():
        rows.append(f"Target Utterance: {transcript.strip()}")
    rows.append(
        f"Task: Predict the probability distribution of emotions for {_TARGETS[target]} from the following options: "
        f"{[str(c) for c in classes]}.\nConsider both the context and acoustic features."
    )
    return rows


def zeroshot_prompt(
    transcript: str | None,
    classes: Sequence[str],
    *,
    cot: bool = False,
    target: str = "utterance",
    background: str | None = IEMOCAP_BACKGROUND,
) -> str:
    """Appendix Table 1's prompt (Table 2's with ``cot=True``) for one utterance.

    ``target="audio"`` is A.1's CREMA-D wording. A missing or blank transcript leaves out the Target Utterance row;
    ``background=None`` leaves out the Background row.
    """
    rows = _context_rows(transcript, classes, target, background)
    if cot:  # Table 2: the step-by-step instructions go between Task and Output Constraints
        rows.append("CoT Instructions:\n" + "\n".join(f"- {item}" for item in _COT))
    first = json.dumps(str(classes[0]), ensure_ascii=False)
    rows.append(
        "Output Constraints:\n"
        f"1. Generate EXACTLY this JSON structure: {{{first}:float, ...}}\n"
        "Before outputting, check if the format of your output is in accordance with the requirements I provided.\n"
        "2. Sum of probabilities must equal to 1.0.\n"
        "3. Do not include any explanations or text besides the dictionary."
    )
    return "\n".join(rows)


def verifier_prompt(
    transcript: str | None,
    classes: Sequence[str],
    candidate: str,
    *,
    target: str = "utterance",
    background: str | None = IEMOCAP_BACKGROUND,
) -> str:
    """Appendix Table 3's verifier prompt scoring one candidate answer (its raw text) to the zero-shot prompt.

    ``background`` is the zero-shot prompt's conversation background, shown with the target utterance and the task
    as the "User Prompt" (the verifier judges the distribution against "the utterance and context"); the verifier's
    own Background row is fixed.
    """
    user_prompt = "\n".join(_context_rows(transcript, classes, target, background))
    return "\n".join(
        [
            f"Background: {_VERIFIER_BACKGROUND}",
            "Role: User",
            f"User Prompt:\n{user_prompt}",
            f"Model Output:\n{candidate}",
            f"Task: {_VERIFIER_TASK}",
            "Scoring Guide:\n" + "\n".join(f"- {item}" for item in _SCORING_GUIDE),
        ]
    )


def _conversation(audio: np.ndarray, prompt: str) -> list[dict[str, Any]]:
    """One user turn: the audio, then the prompt text; no system message."""
    return [{"role": "user", "content": [{"type": "audio", "audio": audio}, {"type": "text", "text": prompt}]}]


def zeroshot_conversation(
    audio: np.ndarray,
    transcript: str | None,
    classes: Sequence[str],
    *,
    cot: bool = False,
    target: str = "utterance",
    background: str | None = IEMOCAP_BACKGROUND,
) -> list[dict[str, Any]]:
    """The chat messages of one zero-shot request: a user turn with the audio, then ``zeroshot_prompt``."""
    return _conversation(
        audio, zeroshot_prompt(transcript, classes, cot=cot, target=target, background=background)
    )


def verifier_conversation(audio: np.ndarray, prompt: str) -> list[dict[str, Any]]:
    """The chat messages of one verifier request: a user turn with the audio, then the verifier prompt."""
    return _conversation(audio, prompt)
