"""Appendix Table 4's parsing strategies, class-name matching and the verifier-score parser, on fixed strings."""

from __future__ import annotations

import math

import pytest

from ser_lightning.alm import PARSE_STRATEGIES, match_class, parse_distribution, parse_score

IEMOCAP = ("Anger", "Happiness", "Neutral state", "Sadness")
MSP = ("Angry", "Sad", "Happy", "Surprise", "Fear", "Disgust", "Contempt", "Neutral", "Other")
CREMA = ("Anger", "Disgust", "Fear", "Happy", "Neutral", "Sad")
PAPER = ("Neutral state", "Happiness", "Anger", "Sadness")  # the order of Appendix Table 1


def _approx(values: list[float]) -> object:
    return pytest.approx(values, abs=1e-12)


@pytest.mark.parametrize(
    ("text", "classes", "expected"),
    [
        ('{"Neutral state": 0.5, "Happiness": 0.2, "Anger": 0.1, "Sadness": 0.2}', PAPER, [0.5, 0.2, 0.1, 0.2]),
        ('{"Anger": 1, "Happiness": 1, "Neutral state": 2}', IEMOCAP, [0.25, 0.25, 0.5, 0.0]),  # normalised
        ('```json\n{"Sadness": 0.6, "Anger": 0.4}\n```', IEMOCAP, [0.4, 0.0, 0.0, 0.6]),
        ('Here it is: {"anger": 0.3, "SADNESS": 0.3} Hope this helps.', IEMOCAP, [0.5, 0.0, 0.0, 0.5]),
        ("{'Neutral state': 0.75, 'Happiness': 0.25}", IEMOCAP, [0.0, 0.25, 0.75, 0.0]),  # python dict
        ('{"Anger": 0.6, "Happiness": 0.2, "Sadness": 0.2, }', IEMOCAP, [0.6, 0.2, 0.0, 0.2]),  # trailing comma
        ('{"Anger": "0.3", "Sadness": "0.7"}', IEMOCAP, [0.3, 0.0, 0.0, 0.7]),  # numeric strings
        ('{"Anger": 0.5, "Joy": 0.4, "Neutral": 0.5}', IEMOCAP, [0.5, 0.0, 0.5, 0.0]),  # unknown key ignored
        # The paper's long forms against short class names, and back.
        ('{"Neutral state": 0.5, "Happiness": 0.25, "Anger": 0.25}', MSP, [0.25, 0, 0.25, 0, 0, 0, 0, 0.5, 0]),
        ('{"Angry": 0.2, "Sad": 0.8}', IEMOCAP, [0.2, 0.0, 0.0, 0.8]),
        ('{"emotions": {"Happy": 0.9, "Fearful": 0.1}}', CREMA, [0.0, 0.0, 0.1, 0.9, 0.0, 0.0]),  # nested object
    ],
)
def test_json_dict(text: str, classes: tuple[str, ...], expected: list[float]) -> None:
    probs, strategy = parse_distribution(text, classes)
    assert strategy == "json_dict"
    assert probs == _approx(expected)
    assert all(type(p) is float for p in probs)


@pytest.mark.parametrize(
    ("text", "classes", "expected"),
    [
        ("['disgust', 'neutral']", CREMA, [0.0, 0.5, 0.0, 0.0, 0.5, 0.0]),
        ('["happy"]', CREMA, [0.0, 0.0, 0.0, 1.0, 0.0, 0.0]),
        ("The emotions are ['Sadness', 'joy', 'anger'].", CREMA, [0.5, 0.0, 0.0, 0.0, 0.0, 0.5]),  # joy ignored
        ("[sad, fearful]", CREMA, [0.0, 0.0, 0.5, 0.0, 0.0, 0.5]),  # bare names
        ("['Happy', 'happiness']", IEMOCAP, [0.0, 1.0, 0.0, 0.0]),  # one class named twice
    ],
)
def test_emotion_list(text: str, classes: tuple[str, ...], expected: list[float]) -> None:
    assert parse_distribution(text, classes) == (_approx(expected), "emotion_list")


@pytest.mark.parametrize(
    ("text", "classes", "expected"),
    [
        ("[0.3, 0.2, 0.5]", ("A", "B", "C"), [0.3, 0.2, 0.5]),
        ("[0.3, 0.2, 0.5]", IEMOCAP, [0.3, 0.2, 0.5, 0.0]),  # padded
        ("Probabilities: [1, 1, 1, 1, 4, 2] for the four classes", IEMOCAP, [0.25, 0.25, 0.25, 0.25]),  # trimmed
        ("[2, 6]", IEMOCAP, [0.25, 0.75, 0.0, 0.0]),  # normalised
        ("[-0.5, 1.5] then [1e-1, 3e-1]", IEMOCAP, [0.25, 0.75, 0.0, 0.0]),  # a negative list is skipped
    ],
)
def test_float_list(text: str, classes: tuple[str, ...], expected: list[float]) -> None:
    assert parse_distribution(text, classes) == (_approx(expected), "float_list")


@pytest.mark.parametrize(
    ("text", "classes", "index"),
    [
        ("sad", CREMA, 5),
        ("The speaker sounds ANGRY.", IEMOCAP, 0),  # Angry ~ Anger
        ("I'd say neutral-state overall.", IEMOCAP, 2),
        ("Neutral state", MSP, 7),  # long form, two words, against a one-word class
        ("mostly happy, a little sad", CREMA, 3),  # several classes: the first mentioned
        ("sadness and anger", IEMOCAP, 3),
        # JSON that fails (non-numeric, NaN, all-zero, truncated) falls through to the keyword match.
        ('{"Anger": "high", "Sadness": "low"}', IEMOCAP, 0),
        ('{"Sadness": NaN, "Anger": 1}', IEMOCAP, 3),
        ('{"Anger": 0, "Sadness": 0}', IEMOCAP, 0),
        ("{'Sadness': 0.3, 'Anger': ", IEMOCAP, 3),
    ],
)
def test_keyword(text: str, classes: tuple[str, ...], index: int) -> None:
    expected = [0.0] * len(classes)
    expected[index] = 1.0
    assert parse_distribution(text, classes) == (expected, "keyword")


@pytest.mark.parametrize(
    "text",
    [
        None,
        "",
        "   \n",
        "0.54",  # Table 4 "Single Float"
        "[0.54]",
        "The answer is 0.54.",
        "I cannot determine the emotion.",
        "unhappy and sadly angrier",  # not whole words of any class or form
        '{"Joy": 0.5, "Calm": 0.5}',
        '{"Joy": 0, "Calm": 0}',
        "[0, 0, 0]",  # sums to zero
        "[0.5, inf]",
    ],
)
def test_invalid(text: str | None) -> None:
    assert parse_distribution(text, IEMOCAP) == (None, "invalid")


def test_strategy_order_and_names() -> None:
    assert PARSE_STRATEGIES == ("json_dict", "emotion_list", "float_list", "keyword", "invalid")
    # JSON first even after a list; an emotion list before a float list; a float list before keywords.
    assert parse_distribution("['Sadness'] {\"Anger\": 1}", IEMOCAP)[1] == "json_dict"
    assert parse_distribution("[0.2, 0.8] ['Sadness']", IEMOCAP)[1] == "emotion_list"
    assert parse_distribution("Anger: [0.2, 0.8]", IEMOCAP)[1] == "float_list"


def test_negative_json_value_falls_through() -> None:
    probs, strategy = parse_distribution('{"Anger": -0.2, "Sadness": 1.2}', IEMOCAP)
    assert (probs, strategy) == ([1.0, 0.0, 0.0, 0.0], "keyword")


def test_probabilities_sum_to_one() -> None:
    probs, _ = parse_distribution('{"Anger": 0.1, "Happiness": 0.1, "Neutral state": 0.1, "Sadness": 0.4}', IEMOCAP)
    assert math.isclose(sum(probs), 1.0, abs_tol=1e-12)
    assert probs == _approx([1 / 7, 1 / 7, 1 / 7, 4 / 7])


@pytest.mark.parametrize(
    ("name", "classes", "index"),
    [
        ("Anger", IEMOCAP, 0),
        (" anger! ", IEMOCAP, 0),
        ("Angry", IEMOCAP, 0),
        ("Neutral", IEMOCAP, 2),
        ("neutral-state", IEMOCAP, 2),
        ("Happy", IEMOCAP, 1),
        ("Sad", IEMOCAP, 3),
        ("Happiness", MSP, 2),
        ("Sadness", MSP, 1),
        ("Anger", MSP, 0),
        ("Neutral state", MSP, 7),
        ("fearful", MSP, 4),
        ("Disgusted", MSP, 5),
        ("surprised", MSP, 3),
        ("contemptuous", MSP, 6),
        ("other", MSP, 8),
        ("excited", ("Excitement", "Frustration"), 0),
        ("Frustrated", ("Excitement", "Frustration"), 1),
        ("frustration", ("Excited", "Frustrated"), 1),
        ("Joy", IEMOCAP, None),  # no semantic synonyms
        ("scared", MSP, None),
        ("unhappy", IEMOCAP, None),
        ("", IEMOCAP, None),
    ],
)
def test_match_class(name: str, classes: tuple[str, ...], index: int | None) -> None:
    assert match_class(name, classes) == index


def test_forms_of_one_emotion_cannot_be_two_classes() -> None:
    with pytest.raises(ValueError, match="same emotion"):
        match_class("Happy", ("Happy", "Happiness"))


@pytest.mark.parametrize("classes", [("Neutral", "Neutral state"), ("Anger", "Angry"), ("Sad", "sad"), ("", "A")])
def test_colliding_classes_raise(classes: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="class"):
        parse_distribution("anything", classes)


@pytest.mark.parametrize(
    ("text", "score"),
    [
        ("0.8", 0.8),
        ("0.0", 0.0),
        ("1.0", 1.0),
        ("1", 1.0),
        ("Score: 0.65", 0.65),
        ("0.7\nThe distribution is partially reasonable.", 0.7),
        (".5", 0.5),
        ("0.9 (out of 1.0)", 0.9),
    ],
)
def test_parse_score(text: str, score: float) -> None:
    assert parse_score(text) == score


@pytest.mark.parametrize("text", [None, "", "good match", "1.5", "-0.2", "8/10", "85%"])
def test_parse_score_unparseable(text: str | None) -> None:
    assert parse_score(text) is None
