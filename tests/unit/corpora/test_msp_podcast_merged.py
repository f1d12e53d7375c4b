"""MSP-Podcast ``merged`` (the entropy-curriculum authors' rule) and consensus labels, from a label file written here.

References are hand computations: P = normalised primary counts, S = normalised sum of the per-rater secondary
shares (each rater's in-set secondaries share one vote), merged = normalise(w_p P + w_s S).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from fractions import Fraction as F
from pathlib import Path

import numpy as np
import pytest

from ser_lightning.corpora.msp_podcast import read_msp_podcast
from ser_lightning.data.shards import iter_shard_meta, write_shards

CONSENSUS = (
    "FileName,EmoClass,EmoAct,EmoVal,EmoDom,SpkrID,Gender,Split_Set\n"
    "U1.wav,A,4,3,4,1,Female,Train\n"
    "U2.wav,X,4,4,4,2,Male,Train\n"
    "U3.wav,N,4,4,4,3,Female,Test1\n"
    "U4.wav,O,4,4,4,4,Male,Train\n"
)
DETAILED = (
    "FileName,WorkerID,EmoClass_Major,EmoClass_Second,EmoAct,EmoVal,EmoDom\n"
    'U1.wav,R1,Angry,"Frustrated,Annoyed,Sad",4,3,4\n'  # Angry (twice: one), Sad -> 1/2 each
    'U1.wav,R2,Angry,"Excited, amused",4,3,4\n'  # both Happy -> Happy 1
    "U1.wav,R3,Contempt,,4,3,4\n"  # no secondary: nothing in S
    'U1.wav,R4,Bored,"Disappointed,Concerned,Depressed,Curious",4,3,4\n'  # unknown primary; Sad 1, Curious dropped
    "U1.wav,R5,Sad,Other-Bored,4,3,4\n"  # msp9: Other 1; msp8: "Bored", dropped
    "U2.wav,R1,Neutral,,4,4,4\n"
    "U2.wav,R2,Happy,,4,4,4\n"
    "U3.wav,R1,Neutral,Neutral,4,4,4\n"
    "U3.wav,R2,Neutral,Surprised,4,4,4\n"
    "U4.wav,R1,Neutral,,4,4,4\n"
)
# msp9 order: Angry, Sad, Happy, Surprise, Fear, Disgust, Contempt, Neutral, Other
ANGRY, SAD, HAPPY, SURPRISE, CONTEMPT, NEUTRAL, OTHER = 0, 1, 2, 3, 6, 7, 8


def _dist(values: dict[int, F], num_classes: int) -> np.ndarray:
    out = np.zeros(num_classes)
    for i, v in values.items():
        out[i] = float(v)
    return out


@pytest.fixture
def root(tmp_path: Path, wav_writer: Callable[..., Path]) -> Path:
    """A release tree with the label files above and a 0.5 s WAV per consensus row."""
    base = tmp_path / "msp"
    (base / "Labels").mkdir(parents=True)
    (base / "Labels" / "labels_consensus.csv").write_text(CONSENSUS, encoding="utf-8")
    (base / "Labels" / "labels_detailed.csv").write_text(DETAILED, encoding="utf-8")
    for k, line in enumerate(CONSENSUS.splitlines()[1:]):
        wav_writer(base / "Audios" / line.split(",")[0], seconds=0.5, seed=k)
    return base


def _by_id(records):
    return {r.id: r for r in records}


def test_merged_msp9_against_hand_computation(root: Path) -> None:
    recs = _by_id(read_msp_podcast(root, "msp9")[0])
    # P: Angry 2, Contempt 1, Other 1 (R4's unknown "Bored"), Sad 1 -> / 5
    p = {ANGRY: F(2, 5), SAD: F(1, 5), CONTEMPT: F(1, 5), OTHER: F(1, 5)}
    # S: R1 Angry 1/2 + Sad 1/2, R2 Happy 1, R4 Sad 1, R5 Other 1 -> total 4
    s = {ANGRY: F(1, 8), SAD: F(3, 8), HAPPY: F(1, 4), OTHER: F(1, 4)}
    merged = {c: F(95, 100) * p.get(c, 0) + F(5, 100) * s.get(c, 0) for c in set(p) | set(s)}
    assert sum(merged.values()) == 1
    np.testing.assert_allclose(recs["U1"].votes["primary"], _dist({c: 5 * v for c, v in p.items()}, 9))
    np.testing.assert_allclose(recs["U1"].votes["merged"], 5 * _dist(merged, 9))
    np.testing.assert_allclose(recs["U1"].votes["merged"][[ANGRY, SAD, HAPPY, CONTEMPT, OTHER]],
                               5 * np.array([0.38625, 0.20875, 0.0125, 0.19, 0.2025]))  # fmt: skip
    # U2: no secondary anywhere -> merged = P
    np.testing.assert_allclose(recs["U2"].votes["merged"], _dist({HAPPY: F(1), NEUTRAL: F(1)}, 9))


def test_merged_msp8_drops_names_outside_the_set(root: Path) -> None:
    records, report = read_msp_podcast(root, "msp8", drop_out_of_set_votes=True)
    recs = _by_id(records)
    # P: R4's "Bored" is dropped -> Angry 2, Contempt 1, Sad 1 over 4
    p = {ANGRY: F(1, 2), SAD: F(1, 4), CONTEMPT: F(1, 4)}
    # S: R1 Angry 1/2 + Sad 1/2, R2 Happy 1, R4 Sad 1 (Curious dropped), R5's Other-Bored dropped -> total 3
    s = {ANGRY: F(1, 6), SAD: F(1, 2), HAPPY: F(1, 3)}
    merged = {c: F(95, 100) * p.get(c, 0) + F(5, 100) * s.get(c, 0) for c in set(p) | set(s)}
    np.testing.assert_allclose(recs["U1"].votes["merged"], 4 * _dist(merged, 8))
    assert report.notes["secondary_outside_class_set"] == 2  # Curious, Other-Bored
    assert report.ignored_labels["Bored"] == 1


def test_merged_weights_are_configurable(root: Path) -> None:
    records, report = read_msp_podcast(root, "msp9", merged_weights=(0.5, 0.5))
    p = np.array([2, 1, 0, 0, 0, 0, 1, 0, 1]) / 5
    s = np.array([0.5, 1.5, 1, 0, 0, 0, 0, 0, 1]) / 4
    np.testing.assert_allclose(_by_id(records)["U1"].votes["merged"], 5 * (0.5 * p + 0.5 * s))
    assert report.label_rules["merged"] == {"name": "authors-weighted", "primary_weight": 0.5, "secondary_weight": 0.5}


@pytest.mark.parametrize(("classes", "expected"), [
    ("msp9", {"U1": "Angry", "U2": "Other", "U3": "Neutral", "U4": "Other"}),
    ("msp8", {"U1": "Angry", "U2": None, "U3": "Neutral", "U4": None}),
])  # fmt: skip
def test_consensus_labels_with_no_agreement(root: Path, classes: str, expected: dict) -> None:
    records, report = read_msp_podcast(root, classes, drop_out_of_set_votes=True)
    assert {r.id: r.consensus for r in records} == expected
    assert report.notes["consensus_no_agreement"] == 1


def test_shards_store_consensus_and_the_card_records_the_rule(root: Path, tmp_path: Path) -> None:
    records, report = read_msp_podcast(root, "msp9", merged_weights=(0.9, 0.1))
    card = write_shards(records, tmp_path / "out", report=report, progress=False)
    assert card["label_sources"]["merged"]["rule"] == {
        "name": "authors-weighted", "primary_weight": 0.9, "secondary_weight": 0.1,
    }  # fmt: skip
    assert "rule" not in card["label_sources"]["primary"]
    saved = json.loads((tmp_path / "out" / "card.json").read_text(encoding="utf-8"))
    assert saved["label_sources"]["merged"]["rule"]["primary_weight"] == 0.9
    metas = {m["id"]: m for m in iter_shard_meta(tmp_path / "out")}
    consensus = {i: m["consensus"] for i, m in metas.items()}
    assert consensus == {"U1": "Angry", "U2": "Other", "U3": "Neutral", "U4": "Other"}
    u1 = metas["U1"]
    expected = 0.9 * np.array([2, 1, 0, 0, 0, 0, 1, 0, 1]) / 5 + 0.1 * np.array([0.5, 1.5, 1, 0, 0, 0, 0, 0, 1]) / 4
    np.testing.assert_allclose(u1["distribution"]["merged"], expected)
    np.testing.assert_allclose(sum(u1["votes"]["merged"]), 5.0)  # effective votes: the rater count
    nz = expected[expected > 0]
    assert u1["entropy"]["merged"] == pytest.approx(float(-(nz * np.log(nz)).sum()))


def test_weighted_merge_edge_cases() -> None:
    from ser_lightning.labels import weighted_merge

    # rows: S empty -> P; w_p = 0 and S empty -> P; w_p = 0 -> S
    got = weighted_merge([[3, 1, 0], [3, 1, 0], [1, 1, 0]], [[0, 0, 0], [0, 0, 0], [0, 0, 2]], 0.0, 1.0)
    np.testing.assert_allclose(got, [[0.75, 0.25, 0], [0.75, 0.25, 0], [0, 0, 1]])
    np.testing.assert_allclose(weighted_merge([1, 0], [0, 3]), [0.95, 0.05])
    with pytest.raises(ValueError, match="at least one vote"):
        weighted_merge([0, 0], [1, 0])
