"""DiME-Aug: Eq. 1-2, transcript rule, minority classes and amounts, neighbours, the streaming mixer."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from shard_fixtures import CLASSES, RATE, utterance, write_clips

from ser_lightning.data.dime.index import build_dime_index
from ser_lightning.data.dime.maths import (
    choose_neighbour,
    dime_amounts,
    dime_mix,
    minority_classes,
    nearest_neighbours,
    standardise,
)
from ser_lightning.data.dime.mixer import DimeMixer

# 20 Neutral, 12 Happiness, 4 Anger, 5 Sadness: threshold 0.3 x 20 = 6 -> Anger and Sadness are minorities.
PER_CLASS = {"Anger": 4, "Happiness": 12, "Neutral": 20, "Sadness": 5}


# --------------------------------------------------------------------------------------------
# Tiny shards (docs/shard-format.md)
# --------------------------------------------------------------------------------------------


def _utterances(seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for c, cls in enumerate(CLASSES):
        for n in range(PER_CLASS[cls]):
            votes = [0.0] * len(CLASSES)
            votes[c] = 3.0
            votes[(c + 1) % len(CLASSES)] = float(n % 2)
            length = int(rng.integers(2400, 6400))
            t = np.arange(length) / RATE
            audio = 0.3 * np.sin(2 * np.pi * (200 + 150 * c + 5 * n) * t) + 0.01 * rng.standard_normal(length)
            audio = np.round(audio * 32768).clip(-32768, 32767) / 32768  # exactly representable in PCM_16
            out.append(
                {
                    "id": f"Ses01.{cls}_{n:03d}",
                    "audio": audio.astype(np.float32),
                    "votes": votes,
                    "transcript": f"{cls.lower()} words number {n}",
                }
            )
    return out


def _distribution(u: dict) -> np.ndarray:
    return np.asarray(u["votes"]) / sum(u["votes"])


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict]]:
    root = tmp_path_factory.mktemp("shards")
    utts = _utterances()
    clips = [
        (
            utterance(u["id"], "train", u["votes"], transcript=u["transcript"], vad=[3.0, 2.0, 4.0], vad_scale=(1, 5)),
            u["audio"],
        )
        for u in utts
    ]
    write_clips(clips, root, maxcount=16)
    return build_dime_index(root), {u["id"]: u for u in utts}


def _stream(n: int = 41) -> list[dict]:
    return [
        {"id": f"real-{i}", "audio": np.zeros(10, np.float32), "meta": {}, "target": np.zeros(4, np.float32)}
        for i in range(n)
    ]


def _synthetic(samples: list[dict]) -> list[dict]:
    return [s for s in samples if s["id"].startswith("dime-")]


# --------------------------------------------------------------------------------------------
# Eq. 1-2 and the transcript rule
# --------------------------------------------------------------------------------------------


def test_dime_mix_matches_hand_computation() -> None:
    x, p, text = dime_mix([1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0], [1.0, 0.0], [0.5, 0.5], 0.25, "ti", "tj")
    np.testing.assert_allclose(x, [7.75, 15.5, 23.25])  # 0.25 x_i + 0.75 x_j, cropped to 3 samples
    np.testing.assert_allclose(p, [0.625, 0.375])  # 0.25 [1, 0] + 0.75 [0.5, 0.5]
    assert text == "tj"
    assert x.dtype == np.float32
    assert p.dtype == np.float32


@pytest.mark.parametrize(("lam", "expected"), [(0.0, "tj"), (0.49, "tj"), (0.5, "ti"), (0.7, "ti"), (1.0, "ti")])
def test_transcript_of_dominant_source(lam: float, expected: str) -> None:
    assert dime_mix(np.ones(3), np.ones(3), [1, 0], [0, 1], lam, "ti", "tj")[2] == expected


def test_crop_to_shorter_clip_either_side() -> None:
    short, long = np.arange(5, dtype=np.float32), np.arange(100, 108, dtype=np.float32)
    x, _, _ = dime_mix(long, short, [1], [1], 1.0, "", "")
    np.testing.assert_array_equal(x, long[:5])
    x, _, _ = dime_mix(short, long, [1], [1], 0.0, "", "")
    np.testing.assert_array_equal(x, long[:5])


def test_dime_mix_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="lambda"):
        dime_mix(np.ones(3), np.ones(3), [1], [1], 1.5, "", "")
    with pytest.raises(ValueError, match="shape"):
        dime_mix(np.ones(3), np.ones(3), [1, 0], [1, 0, 0], 0.5, "", "")


# --------------------------------------------------------------------------------------------
# Minority classes and amounts
# --------------------------------------------------------------------------------------------


def test_minority_classes() -> None:
    counts = {"A": 100, "B": 29, "C": 30, "D": 0}
    assert minority_classes(counts, 0.3) == ["B", "D"]  # 30 is not < 0.3 x 100
    assert minority_classes([100, 29, 30, 0], 0.3) == [1, 3]
    assert minority_classes([10, 3], 0.3) == []  # 0.3 x 10 is 3, not 3.0000000000000004
    assert minority_classes([10, 10], 0.3) == []
    with pytest.raises(ValueError, match="ratio"):
        minority_classes([1, 2], 0.0)


def test_amounts_deficit_mode() -> None:
    counts = {"A": 100, "B": 10, "C": 29, "D": 1}
    assert dime_amounts(counts, 0.3) == {"A": 0, "B": 20, "C": 1, "D": 0}  # D has nothing to mix with
    np.testing.assert_array_equal(dime_amounts([10, 2], 0.25), [0, 1])  # ceil(2.5) - 2


def test_amounts_proportion_mode_largest_remainder() -> None:
    counts = {"A": 100, "B": 10, "C": 20, "D": 25}  # deficits 20, 10, 5
    amounts = dime_amounts(counts, 0.3, proportion=0.1, train_size=155)  # round(15.5) = 16
    # quotas 9.14, 4.57, 2.29 -> floors 9, 4, 2 and the one left goes to the largest remainder (C).
    assert amounts == {"A": 0, "B": 9, "C": 5, "D": 2}


def test_amounts_proportion_totals_exact() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        counts = rng.integers(2, 500, size=int(rng.integers(2, 9)))
        counts[0] = 1000
        prop = float(rng.uniform(0.01, 1.0))
        amounts = dime_amounts(counts, 0.3, proportion=prop, train_size=int(counts.sum()))
        minority = set(minority_classes(counts, 0.3))
        if minority:
            assert amounts.sum() == int(np.floor(prop * counts.sum() + 0.5))
        assert all(a == 0 for c, a in enumerate(amounts) if c not in minority)


def test_amounts_validation() -> None:
    with pytest.raises(ValueError, match="proportion"):
        dime_amounts([10, 1], proportion=1.5, train_size=11)
    with pytest.raises(ValueError, match="train_size"):
        dime_amounts([10, 1], proportion=0.5)
    np.testing.assert_array_equal(dime_amounts([10, 10], proportion=0.5, train_size=20), [0, 0])


# --------------------------------------------------------------------------------------------
# Neighbours
# --------------------------------------------------------------------------------------------


def test_nearest_neighbours_same_group_k_nearest() -> None:
    rng = np.random.default_rng(1)
    x = standardise(rng.normal(size=(40, 5)) * [1, 10, 100, 1, 1])
    groups = rng.integers(0, 3, size=40)
    groups[:2] = 7  # a group of two: one neighbour each
    groups[2] = 9  # a group of one: none
    nn = nearest_neighbours(x, groups, k=3, block=7)
    for r in range(40):
        same = [q for q in range(40) if groups[q] == groups[r] and q != r]
        brute = sorted(same, key=lambda q: (np.linalg.norm(x[r] - x[q]), q))[:3]
        assert nn[r] == brute
    assert nn[0] == [1]
    assert nn[2] == []


def test_standardise_constant_column() -> None:
    z = standardise(np.array([[1.0, 5.0], [3.0, 5.0]]))
    np.testing.assert_allclose(z, [[-1.0, 0.0], [1.0, 0.0]])


def test_choose_neighbour_uniform() -> None:
    rng = np.random.default_rng(0)
    freq = Counter(choose_neighbour(["a", "b", "c"], rng) for _ in range(30000))
    assert set(freq) == {"a", "b", "c"}
    assert all(abs(f / 30000 - 1 / 3) < 0.02 for f in freq.values())
    with pytest.raises(ValueError, match="neighbour"):
        choose_neighbour([], rng)


# --------------------------------------------------------------------------------------------
# The streaming mixer
# --------------------------------------------------------------------------------------------


def test_mixer_amounts_and_pass_through(toy: tuple[Path, dict]) -> None:
    index_dir, _ = toy
    mixer = DimeMixer(index_dir)
    assert mixer.amounts == {"Anger": 2, "Happiness": 0, "Neutral": 0, "Sadness": 1}
    assert mixer.total == 3
    stream = _stream()
    out = list(mixer(iter(stream)))
    assert [s["id"] for s in out if not s["id"].startswith("dime-")] == [s["id"] for s in stream]
    assert sorted(s["id"] for s in _synthetic(out)) == ["dime-0-0", "dime-0-1", "dime-0-2"]
    # interleaved, not all at the end
    positions = [p for p, s in enumerate(out) if s["id"].startswith("dime-")]
    assert positions[0] < len(out) - 3
    assert DimeMixer(index_dir, amount=0.5).total == round(0.5 * 41 + 1e-9)


def test_synthetic_sample_is_eq_1_2_of_its_sources(toy: tuple[Path, dict]) -> None:
    index_dir, utts = toy
    index = json.loads((index_dir / "index.json").read_text())
    mixer = DimeMixer(index_dir, amount=0.5)
    for n in range(mixer.total):
        s = mixer.synthetic(3, n)
        d = s["meta"]["dime"]
        ui, uj, lam = utts[d["i"]], utts[d["j"]], d["lambda"]
        assert index["dominant"][d["i"]] == index["dominant"][d["j"]] in {"Anger", "Sadness"}
        length = min(len(ui["audio"]), len(uj["audio"]))
        np.testing.assert_allclose(s["audio"], lam * ui["audio"][:length] + (1 - lam) * uj["audio"][:length], atol=1e-6)
        pi, pj = (_distribution(u) for u in (ui, uj))
        np.testing.assert_allclose(s["target"], lam * pi + (1 - lam) * pj, atol=1e-6)
        assert s["meta"]["transcript"] == (ui if lam >= 0.5 else uj)["transcript"]
        assert s["id"] == f"dime-3-{n}"
        assert s["sample_rate"] == RATE
        assert s["audio"].dtype == np.float32
        assert s["target"].dtype == np.float32
        assert s["meta"]["distribution"]["primary"] == pytest.approx(s["target"].tolist())


def test_mixer_neighbour_choice_frequencies(toy: tuple[Path, dict]) -> None:
    index_dir, _ = toy
    index = json.loads((index_dir / "index.json").read_text())
    mixer = DimeMixer(index_dir, amount=1.0)  # 41 per epoch
    pairs: Counter[tuple[str, str]] = Counter()
    for epoch in range(60):
        for n in range(mixer.total):
            d = mixer.synthetic(epoch, n)["meta"]["dime"]
            pairs[d["i"], d["j"]] += 1
    firsts = Counter()
    for (i, _), f in pairs.items():
        firsts[index["dominant"][i], i] += f
    for cls in ("Anger", "Sadness"):  # i is drawn uniformly among its class
        freq = [f for (c, _), f in firsts.items() if c == cls]
        assert len(freq) == PER_CLASS[cls]
        assert max(freq) / min(freq) < 1.6
    by_i: dict[str, Counter[str]] = {}
    for (i, j), f in pairs.items():
        assert j in index["neighbours"][i]  # only among the k nearest (all of the same class)
        by_i.setdefault(i, Counter())[j] = f
    for i, freq in by_i.items():
        assert len(index["neighbours"][i]) == 3
        total = sum(freq.values())
        assert set(freq) == set(index["neighbours"][i])
        assert all(abs(f / total - 1 / 3) < 0.12 for f in freq.values()), (i, freq)


def test_mixer_reproducible_and_fresh_lambda_per_epoch(toy: tuple[Path, dict]) -> None:
    index_dir, _ = toy
    a, b = DimeMixer(index_dir, amount=0.5, seed=7), DimeMixer(index_dir, amount=0.5, seed=7)
    a.set_epoch(4)
    b.set_epoch(4)
    sa, sb = _synthetic(list(a(iter(_stream())))), _synthetic(list(b(iter(_stream()))))
    assert [s["id"] for s in sa] == [s["id"] for s in sb]
    for x, y in zip(sa, sb, strict=True):
        assert x["meta"]["dime"] == y["meta"]["dime"]
        np.testing.assert_array_equal(x["audio"], y["audio"])
    lam4 = [s["meta"]["dime"]["lambda"] for s in sa]
    a.set_epoch(5)
    lam5 = [s["meta"]["dime"]["lambda"] for s in _synthetic(list(a(iter(_stream()))))]
    assert all(x != y for x, y in zip(lam4, lam5, strict=True))
    other = DimeMixer(index_dir, amount=0.5, seed=8).synthetic(4, 0)["meta"]["dime"]["lambda"]
    assert other != lam4[0]


def test_mixer_counts_calls_without_set_epoch(toy: tuple[Path, dict]) -> None:
    mixer = DimeMixer(toy[0])
    first = {s["id"] for s in _synthetic(list(mixer(iter(_stream()))))}
    second = {s["id"] for s in _synthetic(list(mixer(iter(_stream()))))}
    assert first == {"dime-0-0", "dime-0-1", "dime-0-2"}
    assert second == {"dime-1-0", "dime-1-1", "dime-1-2"}


class _Stream(torch.utils.data.IterableDataset):
    def __init__(self, mixer: DimeMixer) -> None:
        self.mixer = mixer

    def __iter__(self):
        return self.mixer(iter(_stream()))


def test_mixer_splits_over_dataloader_workers(toy: tuple[Path, dict]) -> None:
    mixer = DimeMixer(toy[0], amount=0.5)
    mixer.set_epoch(2)
    loader = torch.utils.data.DataLoader(_Stream(mixer), batch_size=None, num_workers=2)
    ids = [s["id"] for s in loader if s["id"].startswith("dime-")]
    assert len(ids) == len(set(ids)) == mixer.total  # disjoint, and all of them together
    assert set(ids) == {f"dime-2-{n}" for n in range(mixer.total)}
    reference = {s["id"]: s["meta"]["dime"] for s in (mixer.synthetic(2, n) for n in range(mixer.total))}
    again = {s["id"]: s["meta"]["dime"] for s in loader if s["id"].startswith("dime-")}
    assert again == reference


def test_mixer_rejects_bad_configuration(toy: tuple[Path, dict], tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="ser-index"):
        DimeMixer(tmp_path)
    with pytest.raises(ValueError, match="label source"):
        DimeMixer(toy[0], label_source="merged")
    with pytest.raises(ValueError, match="amount"):
        DimeMixer(toy[0], amount="balanced")
    with pytest.raises(ValueError, match="k must be"):
        DimeMixer(toy[0], k=4)


def test_mixer_is_an_augment_stage_a_config_can_name(toy: tuple[Path, dict]) -> None:
    """The README's ``data.augment`` YAML: jsonargparse accepts DimeMixer for the AugmentStage protocol."""
    from jsonargparse import ArgumentParser

    from ser_lightning.data.stream.datamodule import SERDataModule

    parser = ArgumentParser()
    parser.add_class_arguments(SERDataModule, "data")
    augment = {"class_path": "ser_lightning.data.dime.mixer.DimeMixer", "init_args": {"index_dir": str(toy[0])}}
    cfg = parser.parse_object({"data": {"shards": str(toy[0].parent), "augment": augment}})
    dm = parser.instantiate_classes(cfg)["data"]
    assert isinstance(dm.augment, DimeMixer)
    assert dm.augment.total == 3
