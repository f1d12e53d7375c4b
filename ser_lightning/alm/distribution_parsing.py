"""Read an ALM's free-text answer as an emotion distribution with the parsing strategies of Appendix Table 4.

The strategies are tried in the paper's order (JSON dictionary, emotion list, float list, keyword match); a single
number or a one-element list is never a distribution. Class names are matched case- and punctuation-insensitively,
and the paper's long forms ("Neutral state", "Happiness", "Anger", "Sadness") match short class names and back.
``parse_score`` reads the verifier's answer to Appendix Table 3.
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from ser_lightning.alm.parsing import normalise_answer

__all__ = ["PARSE_STRATEGIES", "match_class", "parse_distribution", "parse_score"]

PARSE_STRATEGIES: tuple[str, ...] = ("json_dict", "emotion_list", "float_list", "keyword", "invalid")

# Word forms -> canonical key, applied to both the answer's name and the class names. Morphology only: an
# emotion's noun / adjective forms and IEMOCAP's "Neutral state"; no semantic synonyms ("joy" is not "happy").
_FORMS: dict[str, str] = {
    "neutral state": "neutral",
    "happiness": "happy",
    "anger": "angry",
    "sadness": "sad",
    "fearful": "fear",
    "disgusted": "disgust",
    "surprised": "surprise",
    "contemptuous": "contempt",
    "frustrated": "frustration",
    "excited": "excitement",
}

_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_NUMBER_RE = re.compile(_NUMBER)
_BRACKETS = re.compile(r"\[([^\[\]]*)\]")
_FLOAT_LIST = re.compile(rf"^\s*{_NUMBER}(?:\s*,\s*{_NUMBER})*\s*,?\s*$")
_MAX_OBJECT_CHARS = 20_000  # literal_eval guard: a generated answer's dictionary is far shorter


def _key(norm: str) -> str:
    """The canonical key of a normalised name (its form in ``_FORMS``, else itself)."""
    return _FORMS.get(norm, norm)


@lru_cache(maxsize=64)
def _class_index(classes: tuple[str, ...]) -> tuple[dict[str, int], dict[str, int], int]:
    """Exact-name and form-key lookups of a class set, and its longest name in words; raises on collisions."""
    exact: dict[str, int] = {}
    forms: dict[str, int] = {}
    for i, name in enumerate(classes):
        norm = normalise_answer(name)
        if not norm or norm in exact:
            raise ValueError(f"class names must be distinct and non-empty after normalisation, got {list(classes)}")
        exact[norm] = i
        if _key(norm) in forms:
            other = classes[forms[_key(norm)]]
            raise ValueError(f"classes {other!r} and {name!r} are forms of the same emotion in {list(classes)}")
        forms[_key(norm)] = i
    longest = max([len(n.split()) for n in exact] + [len(f.split()) for f in _FORMS])
    return exact, forms, longest


def match_class(name: str, classes: Sequence[str]) -> int | None:
    """Index of the class that ``name`` names (exact normalised name first, then word forms), or None."""
    exact, forms, _ = _class_index(tuple(classes))
    norm = normalise_answer(name)
    if norm in exact:
        return exact[norm]
    return forms.get(_key(norm))


def _normalised(values: list[float]) -> list[float] | None:
    """``values`` divided by their sum, or None when any is negative / non-finite or they sum to zero."""
    if any(not math.isfinite(v) or v < 0 for v in values):
        return None
    total = math.fsum(values)
    if not total > 0 or not math.isfinite(total):
        return None
    return [v / total for v in values]


def _number(value: Any) -> float | None:
    """A JSON value as a float (numbers and numeric strings; booleans are not numbers), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def _objects(text: str) -> list[Any]:
    """Every object literal in ``text``, outermost first: JSON (``raw_decode``) else a Python dict (literal_eval)."""
    decoder = json.JSONDecoder()
    found = []
    for start in (m.start() for m in re.finditer(r"\{", text)):
        try:
            found.append(decoder.raw_decode(text, start)[0])
            continue
        except json.JSONDecodeError:
            pass
        end = _closing_brace(text, start)
        if end is None or end - start > _MAX_OBJECT_CHARS:
            continue
        try:
            found.append(ast.literal_eval(text[start : end + 1]))
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
    return found


def _closing_brace(text: str, start: int) -> int | None:
    """Index of the ``}`` closing the ``{`` at ``start`` (braces inside quoted strings skipped), or None."""
    depth, quote = 0, ""
    for i in range(start, len(text)):
        ch = text[i]
        if quote:
            if ch == quote and text[i - 1] != "\\":
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
    return None


def _json_dict(text: str, classes: Sequence[str]) -> list[float] | None:
    """Table 4 "JSON Dictionary": the first object whose recognised keys carry non-negative numbers, normalised.

    Unknown keys (and their values) are ignored; a recognised key with a non-numeric, negative or non-finite value
    rejects that object. Two keys naming the same class (e.g. "Happy" and "Happiness") add up. A nested object is
    tried on its own after its parent, so {"emotions": {"Anger": 0.2, ...}} is read.
    """
    for obj in _objects(text):
        if not isinstance(obj, dict):
            continue
        values = [0.0] * len(classes)
        recognised, ok = False, True
        for key, value in obj.items():
            idx = match_class(key, classes) if isinstance(key, str) else None
            if idx is None:
                continue
            number = _number(value)
            if number is None or not math.isfinite(number) or number < 0:
                ok = False
                break
            values[idx] += number
            recognised = True
        if ok and recognised and (probs := _normalised(values)) is not None:
            return probs
    return None


def _list_entries(inner: str) -> list[str] | None:
    """The entries of a bracketed list's inside as strings (quoted or bare), or None for a list of numbers."""
    try:
        value = ast.literal_eval(f"[{inner}]")
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        value = [part.strip().strip("'\"") for part in inner.split(",")]
    if not isinstance(value, list) or not value:
        return None
    if not all(isinstance(v, str) for v in value) or any(_NUMBER_RE.fullmatch(v.strip()) for v in value):
        return None
    return value


def _emotion_list(text: str, classes: Sequence[str]) -> list[float] | None:
    """Table 4 "Emotion List": the first bracketed list of names with a recognised one -> uniform over those named."""
    for m in _BRACKETS.finditer(text):
        entries = _list_entries(m.group(1))
        if entries is None:
            continue
        hits = {idx for e in entries if (idx := match_class(e, classes)) is not None}
        if hits:
            return [1.0 / len(hits) if i in hits else 0.0 for i in range(len(classes))]
    return None


def _float_list(text: str, classes: Sequence[str]) -> list[float] | None:
    """Table 4 "Float List": the first bracketed list of at least two numbers, padded / trimmed and normalised."""
    for m in _BRACKETS.finditer(text):
        if not _FLOAT_LIST.match(m.group(1)):
            continue
        values = [float(v) for v in _NUMBER_RE.findall(m.group(1))]
        if len(values) < 2:  # Table 4 "Single Float": [0.54] is not a distribution
            continue
        values = (values + [0.0] * len(classes))[: len(classes)]
        if (probs := _normalised(values)) is not None:
            return probs
    return None


def _keyword(text: str, classes: Sequence[str]) -> list[float] | None:
    """Table 4 "Keyword Match": a class named as whole words -> one-hot.

    The paper does not say what happens when several classes are mentioned; we take the FIRST mention in the text
    (at each word, the longest n-gram that names a class wins, so "neutral state" is one mention).
    """
    *_, longest = _class_index(tuple(classes))
    words = normalise_answer(text).split()
    for start in range(len(words)):
        for n in range(min(longest, len(words) - start), 0, -1):
            idx = match_class(" ".join(words[start : start + n]), classes)
            if idx is not None:
                return [1.0 if i == idx else 0.0 for i in range(len(classes))]
    return None


def parse_distribution(text: str | None, classes: Sequence[str]) -> tuple[list[float] | None, str]:
    """``(probabilities aligned with classes, strategy)`` with Table 4's strategies in order, or ``(None, "invalid")``.

    Table 4 "Single Float": a lone number ("0.54") or one-element list ("[0.54]") names no class and is invalid.
    """
    _class_index(tuple(classes))  # raises on colliding class names even when the text is empty
    if text is None or not text.strip():
        return None, "invalid"
    for name, strategy in (
        ("json_dict", _json_dict),
        ("emotion_list", _emotion_list),
        ("float_list", _float_list),
        ("keyword", _keyword),
    ):
        probs = strategy(text, classes)
        if probs is not None:
            return probs, name
    return None, "invalid"


def parse_score(text: str | None) -> float | None:
    """The verifier's score (Appendix Table 3): the first number in the text if it lies in [0, 1], else None."""
    if text is None:
        return None
    m = _NUMBER_RE.search(text)
    if m is None:
        return None
    value = float(m.group(0))
    return value if 0.0 <= value <= 1.0 else None
