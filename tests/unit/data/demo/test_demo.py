"""The embedded demo corpus: vote table, vote sampler, plan, synthesis and the committed shards."""

from __future__ import annotations

import glob
import importlib.util
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from ser_lightning.data import demo
from ser_lightning.data.demo import synth as demo_synth
from ser_lightning.data.demo import votes as demo_votes
from ser_lightning.labels import CLASS_SETS

REPO_ROOT = Path(__file__).resolve().parents[4]
DEMO_DIR = REPO_ROOT / "shards" / "demo"
SCRIPT = REPO_ROOT / "scripts" / "make_demo_vote_table.py"
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
needs_demo = pytest.mark.skipif(not (DEMO_DIR / "card.json").is_file(), reason=f"no demo corpus at {DEMO_DIR}")

# Genders of the default voices, so the plan can be tested without espeak-ng's data files.
GENDERS = {
    v: "female" if v.split("+")[1] in ("f1", "f2", "f3", "f4", "f5", "Andrea", "belinda", "steph") else "male"
    for v in demo.DEFAULT_VOICES
}


# --------------------------------------------------------------------------------------------
# Vote table
# --------------------------------------------------------------------------------------------


def test_vote_table_covers_21_cells_with_valid_distributions():
    expected = {(e, lv) for e in demo_votes.EMOTIONS for lv in demo_votes.LEVELS if e != "NEU"} | {("NEU", "XX")}
    assert set(demo_votes.CELLS) == expected
    assert len(demo_votes.CELLS) == 21
    assert demo_votes.CLASSES == CLASS_SETS["cremad6"].classes
    for cell, fit in demo_votes.CELLS.items():
        mean = np.asarray(fit["mean"])
        assert mean.shape == (6,), cell
        assert (mean > 0).all(), cell
        assert mean.sum() == pytest.approx(1.0, abs=1e-5), cell
        assert fit["precision"] > 0, cell
        assert len(fit["raters"]) == len(demo_votes.RATERS), cell
        assert sum(fit["raters"]) == fit["clips"], cell
    assert sum(fit["clips"] for fit in demo_votes.CELLS.values()) == demo_votes.SOURCE["clips"] == 7442
    # intended emotion at full strength is the plurality of the real raters
    for e, cls in zip(("ANG", "DIS", "FEA", "HAP"), ("Anger", "Disgust", "Fear", "Happy"), strict=True):
        hi = demo_votes.CELLS[(e, "HI")]["mean"]
        assert demo_votes.CLASSES[int(np.argmax(hi))] == cls, e


def test_vote_table_is_up_to_date(crema_d_votes_path, tmp_path):
    spec = importlib.util.spec_from_file_location("make_demo_vote_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "votes.json"
    module.main(["--votes", str(crema_d_votes_path), "--out", str(out)])
    assert out.read_bytes() == (REPO_ROOT / "ser_lightning" / "data" / "demo" / "votes.json").read_bytes()
    assert demo_votes.REFERENCE_JS == pytest.approx(
        {"uniform": 0.378, "overall_mean": 0.290, "cell_mean": 0.185}, abs=1e-3
    )


# --------------------------------------------------------------------------------------------
# Vote sampler
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cell", [("ANG", "HI"), ("SAD", "LO"), ("NEU", "XX"), ("FEA", "XX")])
def test_sample_votes_raters_and_mean(cell):
    rng = np.random.default_rng(0)
    draws = np.stack([demo.sample_votes(*cell, rng) for _ in range(4000)])
    raters = draws.sum(axis=1)
    assert draws.dtype.kind == "i"
    assert (draws >= 0).all()
    assert raters.min() >= 4
    assert raters.max() <= 12
    mean_dist = (draws / raters[:, None]).mean(axis=0)
    np.testing.assert_allclose(mean_dist, demo_votes.CELLS[cell]["mean"], atol=0.02)


def test_sample_votes_rejects_unknown_cell():
    with pytest.raises(KeyError, match="no vote statistics"):
        demo.sample_votes("NEU", "HI", np.random.default_rng(0))


# --------------------------------------------------------------------------------------------
# Plan and prosody (no espeak-ng needed)
# --------------------------------------------------------------------------------------------


def test_plan_is_balanced_seeded_and_speaker_independent():
    clips = demo.plan_clips(demo.DEFAULT_VOICES, seed=0, genders=GENDERS)
    assert clips == demo.plan_clips(list(reversed(demo.DEFAULT_VOICES)), seed=0, genders=GENDERS)
    assert len(clips) == 72 * len(demo.DEFAULT_VOICES) == len({c.id for c in clips})
    per_cell = Counter((c.voice, c.emotion, c.level) for c in clips)
    for voice in demo.DEFAULT_VOICES:
        assert per_cell[(voice, "NEU", "XX")] == 12
        for e in ("ANG", "DIS", "FEA", "HAP", "SAD"):
            assert [per_cell[(voice, e, lv)] for lv in demo_votes.LEVELS] == [3, 3, 3, 3]
    split_of = {}
    for c in clips:
        assert split_of.setdefault(c.voice, c.split) == c.split
        assert demo.cell_of(c.id) == (c.emotion, c.level)
    by_split = Counter((s, GENDERS[v]) for v, s in split_of.items())
    assert by_split == {
        ("train", "male"): 6,
        ("train", "female"): 6,
        ("val", "male"): 1,
        ("val", "female"): 1,
        ("test", "male"): 1,
        ("test", "female"): 1,
    }
    assert demo.plan_clips(demo.DEFAULT_VOICES, seed=1, genders=GENDERS) != clips


def test_prosody_strength_grows_with_level():
    neutral = demo_synth.clip_prosody("en-us+m1", "NEU", "XX", "some_clip")
    assert neutral == demo_synth.clip_prosody("en-us+m1", "NEU", "XX", "some_clip")
    for emotion in ("ANG", "DIS", "FEA", "HAP", "SAD"):
        lo, md, hi = (demo_synth.clip_prosody("en-us+m1", emotion, lv, "some_clip") for lv in ("LO", "MD", "HI"))
        for field in ("pitch", "speed", "amplitude", "range"):
            d = [abs(getattr(p, field) - getattr(neutral, field)) for p in (lo, md, hi)]
            assert d[0] <= d[1] <= d[2], (emotion, field, d)
    loud = demo_synth.clip_prosody("en-us+m1", "ANG", "HI", "x")
    soft = demo_synth.clip_prosody("en-us+m1", "SAD", "HI", "x")
    assert loud.amplitude > soft.amplitude
    assert loud.speed > soft.speed
    assert loud.range > soft.range


# --------------------------------------------------------------------------------------------
# Synthesis
# --------------------------------------------------------------------------------------------


@needs_espeak
def test_synthesis_is_deterministic_16k_and_quantised():
    prosody = demo_synth.clip_prosody("en-us+f1", "HAP", "HI", "en-us+f1_DFA_HAP_HI")
    a = demo_synth.synthesise(demo.SENTENCES["DFA"], "en-us+f1", prosody)
    b = demo_synth.synthesise(demo.SENTENCES["DFA"], "en-us+f1", prosody)
    assert a.dtype == np.float32
    assert a.ndim == 1
    np.testing.assert_array_equal(a, b)
    assert 0.5 < len(a) / demo_synth.SAMPLE_RATE < 3.0
    assert 0.05 < np.abs(a).max() < 0.5
    pcm = np.round(a * 32768).astype(np.int64)
    assert (pcm % 16 == 0).all()
    np.testing.assert_array_equal(np.round(a * 32767).astype(np.int64), pcm)  # exact in either 16-bit convention


@needs_espeak
def test_voice_gender_reads_variants_and_rejects_unknown():
    assert demo_synth.voice_gender("en-us+f1") == "female"
    assert demo_synth.voice_gender("en-us+m1") == "male"
    with pytest.raises(ValueError, match="no voice variant"):
        demo_synth.voice_gender("en-us+nosuchvariant")


# --------------------------------------------------------------------------------------------
# The committed corpus
# --------------------------------------------------------------------------------------------


@needs_demo
def test_committed_demo_corpus():
    card = json.loads((DEMO_DIR / "card.json").read_text(encoding="utf-8"))
    assert card["classes"] == list(CLASS_SETS["cremad6"].classes)
    assert set(card["num_samples"]) == {"train", "val", "test"}
    assert card["sample_rate"] == 16000
    assert card["rejected"] == 0
    size = sum(p.stat().st_size for p in DEMO_DIR.iterdir() if p.is_file())
    assert size <= 25 * 1024**2, f"{size / 1e6:.1f} MB"
    speakers: dict[str, set[str]] = {}
    for split, count in card["num_samples"].items():
        urls = sorted(glob.glob(str(DEMO_DIR / f"{split}-*.tar")))
        assert [Path(u).name for u in urls] == card["shards"][split]
        metas = [json.loads(s["json"]) for s in wds.WebDataset(urls, shardshuffle=False)]
        assert len(metas) == count
        speakers[split] = {m["speaker"] for m in metas}
        for m in metas:
            assert m["corpus"] == "demo"
            assert m["split"] == split
            assert 4 <= sum(m["votes"]["primary"]) <= 12
    assert not speakers["train"] & speakers["val"]
    assert not speakers["train"] & speakers["test"]
    assert not speakers["val"] & speakers["test"]


@pytest.mark.slow
@needs_espeak
@needs_demo
def test_rebuilding_the_demo_reproduces_its_card(tmp_path):
    """The whole build (same espeak-ng, same seed) gives the committed card and shards byte for byte."""
    demo.build(tmp_path / "demo", progress=False)
    assert (tmp_path / "demo" / "card.json").read_bytes() == (DEMO_DIR / "card.json").read_bytes()
    for tar in sorted(DEMO_DIR.glob("*.tar")):
        assert (tmp_path / "demo" / tar.name).read_bytes() == tar.read_bytes(), tar.name
