"""The annotation plan: deterministic persona and temperature per (seed, id, k), personas in turn, 5 strata."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from ser_lightning.alm.prompts import PERSONAS
from ser_lightning.annotate.plan import annotation_plan

# the notebook's strata (get_diverse_temperature) widened by the +-0.05 jitter, clipped to [0.1, 1.0]
STRATA = [(0.1, 0.35), (0.25, 0.55), (0.45, 0.75), (0.65, 0.95), (0.85, 0.98)]


def _stratum(t: float) -> set[int]:
    return {s for s, (lo, hi) in enumerate(STRATA) if lo - 1e-9 <= t <= hi + 1e-9}


def test_plan_is_deterministic_across_processes():
    """Another interpreter (another PYTHONHASHSEED) plans exactly the same questions."""
    here = [annotation_plan(7, f"utt{i}", k) for i in range(5) for k in range(6)]
    code = (
        "from ser_lightning.annotate.plan import annotation_plan;"
        "print([annotation_plan(7, f'utt{i}', k) for i in range(5) for k in range(6)])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "123", "PATH": ""})  # fmt: skip
    assert out.stdout.strip() == str(here)


def test_personas_in_turn_and_temperatures_in_five_strata():
    """k, k+1, ... take the next persona and the next temperature stratum; temperatures in [0.1, 1], 2 decimals."""
    for uid in ("a", "b", "Ses01F_impro01_F000", "train.0003"):
        plans = [annotation_plan(0, uid, k) for k in range(15)]
        personas = [p for p, _ in plans]
        assert all(0 <= p < len(PERSONAS) for p in personas)
        assert all((b - a) % 5 == 1 for a, b in zip(personas, personas[1:], strict=False))
        assert sorted(personas[:5]) == [0, 1, 2, 3, 4]
        temps = [t for _, t in plans]
        assert all(0.1 <= t <= 1.0 and round(t, 2) == t for t in temps)
        # the strata overlap only at their jittered edges: consecutive k must be in consecutive strata
        strata = [_stratum(t) for t in temps]
        assert all(s for s in strata)
        for k in range(5):
            assert any(s in strata[k + 5] and s in strata[k + 10] for s in strata[k]), (uid, temps)


def test_n_extension_keeps_the_first_n():
    """Annotation k depends on (seed, id, k) only: asking for 10 after 4 asks the same first 4."""
    first = [annotation_plan(3, "x", k) for k in range(4)]
    more = [annotation_plan(3, "x", k) for k in range(10)]
    assert more[:4] == first


def test_seed_and_id_change_the_plan():
    """Other seeds and ids give other plans; over many utterances personas and strata pair evenly."""
    assert [annotation_plan(0, "x", k) for k in range(5)] != [annotation_plan(1, "x", k) for k in range(5)]
    plans = np.array([annotation_plan(0, f"u{i}", 0) for i in range(2000)])
    personas, temps = plans[:, 0].astype(int), plans[:, 1]
    assert np.abs(np.bincount(personas, minlength=5) - 400).max() < 80  # k = 0 takes every persona alike
    # each persona meets every stratum: its mean temperature is the overall one (the notebook's persona 0 had ~0.2)
    means = np.array([temps[personas == p].mean() for p in range(5)])
    assert np.abs(means - temps.mean()).max() < 0.05, means
    assert abs(temps.mean() - np.mean([0.2, 0.4, 0.6, 0.8, 0.915])) < 0.03


def test_five_consecutive_annotations_take_one_temperature_from_each_stratum():
    """Annotations k..k+4 of an utterance have one temperature in each of the notebook's (jittered) strata."""
    for i in range(200):
        temps = sorted(annotation_plan(5, f"v{i}", k)[1] for k in range(3, 8))
        assert all(lo - 1e-9 <= t <= hi + 1e-9 for t, (lo, hi) in zip(temps, STRATA, strict=True)), temps


def test_negative_k_is_refused():
    """K starts at 0."""
    with pytest.raises(ValueError, match="k must be >= 0"):
        annotation_plan(0, "x", -1)
