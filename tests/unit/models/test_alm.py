"""ALMDistribution's strategies on scripted candidates: selection, Eq. 2-3 mixing, verifier weights, fallback, tallies.

Generation is replaced by fixed texts and log-likelihoods so every expected distribution is computed by hand here.
"""

from __future__ import annotations

import math

import pytest
import torch

import ser_lightning.models.alm as alm_module
from ser_lightning.alm.generation import Candidates
from ser_lightning.alm.verifier import VerifierScore
from ser_lightning.models import ALMDistribution
from ser_lightning.nn.qwen2_audio.offline import TINY_QWEN2_AUDIO_CONFIG

CLASSES = ["Anger", "Happy", "Sad"]
TEXTS = [
    ['{"Anger": 0.6, "Happiness": 0.4}', "['sad']", "0.5"],  # json_dict, emotion_list, invalid (a single float)
    ["I cannot tell.", "[0.7]", ""],  # no valid candidate: the fallback
]
ALPHA = [[-1.0, -2.0, -3.0], [-0.5, -1.0, -1.5]]


class ScriptedVerifier:
    """Answers the valid candidates of row 0 in order: 0.2, then 0.8."""

    name, model = "scripted", "scripted"

    def __init__(self) -> None:
        self.stats = {"requests": 0, "unparseable": 0, "failures": 0}
        self.prompts: list[str] = []

    def score(self, requests):
        self.prompts.extend(r.prompt for r in requests)
        return [VerifierScore(s, str(s)) for s in (0.2, 0.8)][: len(requests)]


def model_for(strategy: str, monkeypatch: pytest.MonkeyPatch, **kwargs) -> ALMDistribution:
    model = ALMDistribution(
        backbone=None,
        random_config=TINY_QWEN2_AUDIO_CONFIG,
        num_classes=3,
        classes=CLASSES,
        strategy=strategy,
        num_beams=3 if strategy not in ("base", "cot", "exact") else None,
        **kwargs,
    )
    model.backbone = torch.nn.Linear(1, 1)  # built; generation is scripted below
    model.processor = type("P", (), {"tokenizer": None})()
    monkeypatch.setattr(model, "_inputs", lambda batch: {})
    monkeypatch.setattr(
        alm_module,
        "generate_candidates",
        lambda *a, **k: Candidates(TEXTS, torch.tensor(ALPHA, dtype=torch.float64), torch.ones(2, 3)),
    )
    if strategy in ("verifier", "wverifier"):
        model.verifier = ScriptedVerifier()
    return model


BATCH = {"ids": ["u0", "u1"], "audio": torch.zeros(2, 1600), "audio_mask": torch.ones(2, 1600, dtype=torch.bool),
         "transcripts": ["leave me alone", ""]}  # fmt: skip
W0 = math.exp(-1) / (math.exp(-1) + math.exp(-2))  # Eq. 2 over the two valid beams of row 0


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        ("bon", [0.6, 0.4, 0.0]),  # the valid beam with the highest alpha
        ("wbon", [0.6 * W0, 0.4 * W0, 1 - W0]),  # Eq. 3: sum_b w_b p_b
        ("verifier", [0.0, 0.0, 1.0]),  # the verifier's best: 0.8 for the ['sad'] beam
        ("wverifier", [0.2 * 0.6, 0.2 * 0.4, 0.8]),  # scores as weights (0.2 + 0.8 = 1)
    ],
)
def test_strategies_by_hand(strategy, expected, monkeypatch):
    model = model_for(strategy, monkeypatch)
    probs, details = model.predict_with_details(BATCH)
    assert probs[0].tolist() == pytest.approx(expected, abs=1e-6)
    assert probs[1].tolist() == pytest.approx([1 / 3] * 3, abs=1e-6)  # uniform fallback
    assert [d["valid"] for d in details] == [True, False]
    assert [c["parse_strategy"] for c in details[0]["candidates"]] == ["json_dict", "emotion_list", "invalid"]
    assert [c["log_likelihood"] for c in details[1]["candidates"]] == ALPHA[1]
    values = model.tallies["predict"].compute()
    assert values["valid_fraction"] == pytest.approx(0.5)
    assert values["parse/json_dict"] == 1
    assert values["parse/emotion_list"] == 1
    assert values["parse/invalid"] == 4
    assert values["fallback"] == 1
    if strategy in ("verifier", "wverifier"):
        assert len(model.verifier.prompts) == 2  # only valid candidates are verified
        assert "leave me alone" in model.verifier.prompts[0]
        assert "['sad']" in model.verifier.prompts[1]
        assert [c["verifier_score"] for c in details[0]["candidates"]] == [0.2, 0.8, None]


def test_train_mean_fallback(monkeypatch):
    model = model_for("bon", monkeypatch, invalid_fallback="train_mean")
    model._expectation["val"] = {"train_mean": [0.5, 0.3, 0.2]}
    monkeypatch.setattr(model, "_stage", lambda: "val")
    probs, _ = model.predict_with_details(BATCH)
    assert probs[1].tolist() == pytest.approx([0.5, 0.3, 0.2])


def test_arguments_are_checked():
    tiny = {"backbone": None, "random_config": TINY_QWEN2_AUDIO_CONFIG, "num_classes": 3, "classes": CLASSES}
    with pytest.raises(ValueError, match="strategy"):
        ALMDistribution(**tiny, strategy="majority")
    with pytest.raises(ValueError, match="one beam"):
        ALMDistribution(**tiny, strategy="cot", num_beams=4)
    with pytest.raises(ValueError, match="prompt_classes"):
        ALMDistribution(**tiny, prompt_classes=["Anger", "Happy"])
    with pytest.raises(ValueError, match="verifier_model"):
        ALMDistribution(**tiny, strategy="verifier", verifier_backend="gemini")
    renamed = ALMDistribution(**tiny, prompt_classes={"Happy": "Happiness", "Calm": "Calm"})  # unknown keys unused
    assert renamed.prompt_classes == ["Anger", "Happiness", "Sad"]
    assert ALMDistribution(**tiny, strategy="wbon").num_beams == 5  # Sec. 5
    assert ALMDistribution(**tiny, strategy="wverifier").num_beams == 3


def test_fit_is_refused():
    model = ALMDistribution(backbone=None, random_config=TINY_QWEN2_AUDIO_CONFIG, num_classes=3, classes=CLASSES)
    with pytest.raises(RuntimeError, match="zero-shot"):
        model.training_loss({})
