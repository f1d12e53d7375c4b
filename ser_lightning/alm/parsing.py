"""Parse an ALM's free-text answer into one class name, or None with the reason why.

Stricter than the authors' ``parse_single_emotion`` (synthetic_annotation_generation.ipynb), which returns the first
class name found as a substring: here a name counts only as whole words, and an answer naming two different classes
is invalid rather than read as the first one, so "not angry but sad" never becomes a vote for anger.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

__all__ = ["normalise_answer", "parse_label"]

# Markdown emphasis / code / heading / quote marks; list markers at line starts ("- ", "* ", "1. ", "1) ").
_MARKDOWN = re.compile(r"[*_`#>~]+")
_LIST_MARKER = re.compile(r"^\s*(?:[-+*\u2022]|\d+[.)])\s+", re.MULTILINE)


def normalise_answer(text: str) -> str:
    """Casefolded words of ``text``: markdown, list markers and punctuation become spaces, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text)
    text = _LIST_MARKER.sub(" ", text)
    text = _MARKDOWN.sub(" ", text)
    # Every character that is neither a letter nor a digit separates words ("Neutral-state" == "neutral state").
    text = "".join(ch if ch.isalnum() else " " for ch in text.casefold())
    return " ".join(text.split())


def parse_label(raw: str | None, classes: Sequence[str]) -> tuple[str | None, str | None]:
    """``(class name, None)`` when the answer names exactly one class, else ``(None, reason)``.

    Accepted: the exact name, case and punctuation folded, markdown stripped, and one class name (as whole words)
    inside a longer sentence. Invalid: an empty answer, no class name, or two different class names.
    """
    if raw is None or not raw.strip():
        return None, "empty answer"
    names = {normalise_answer(c): c for c in classes}
    if "" in names or len(names) != len(classes):
        raise ValueError(f"class names must be distinct and non-empty after normalisation, got {list(classes)}")
    text = normalise_answer(raw)
    if text in names:
        return names[text], None
    # Longest names first and matched spans blanked, so "neutral state" is not also counted as "neutral".
    found: list[str] = []
    for norm in sorted(names, key=len, reverse=True):
        text, hits = re.subn(rf"(?<!\S){re.escape(norm)}(?!\S)", "|", text)
        if hits:
            found.append(names[norm])
    if len(found) == 1:
        return found[0], None
    if not found:
        return None, "no class name in the answer"
    ordered = [c for c in classes if c in found]
    return None, f"several class names in the answer: {', '.join(ordered)}"
