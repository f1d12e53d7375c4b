"""Cross-validation folds (``data/folds.py``), the ``session`` sample key and the DataModule's ``split_assignment``."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import entropy as scipy_entropy
from shard_fixtures import tone, utterance, write_clips

from ser_lightning.corpora.iemocap import session_from_id
from ser_lightning.data.folds import Row, carve_val, fold_assignments, fold_test_ids, parse_folds, row_of
from ser_lightning.data.shards.card import iter_shard_meta
from ser_lightning.data.stream.datamodule import SERDataModule


def iemocap_rows(sessions: int = 3, per_speaker: int = 10) -> list[Row]:
    """IEMOCAP-like rows: two speakers (F, M) per session, ``per_speaker`` utterances each."""
    rows = []
    for s in range(1, sessions + 1):
        for g in "FM":
            for n in range(per_speaker):
                uid = f"Ses{s:02d}F_impro01_{g}{n:03d}"
                rows.append(Row(uid, str(s), f"Ses{s:02d}_{g}", "train"))
    return rows


def split_of(assignment: dict[str, str], rows: list[Row], key: str) -> dict[str, set[str]]:
    """Key value -> the sets (train / val / test) its rows are in."""
    out: dict[str, set[str]] = {}
    for r in rows:
        out.setdefault(getattr(r, key), set()).add(assignment[r.id])
    return out


# ---------------------------------------------------------------- session key
def test_session_from_iemocap_ids():
    assert session_from_id("Ses01F_impro01_F000") == 1
    assert session_from_id("Ses05M_script02_2_M013") == 5
    assert session_from_id("MSP-PODCAST_0001_0002") is None


def test_row_of_reads_the_stored_session_or_derives_it_for_older_iemocap_shards():
    assert row_of({"id": "a", "session": 3, "speaker": "x", "split": "train"}) == Row("a", "3", "x", "train")
    old = {"id": "Ses04M_impro01_F001", "corpus": "iemocap", "speaker": "Ses04_F", "split": "test"}  # no key
    assert row_of(old).session == "4"
    assert row_of({"id": "Ses04M_x", "corpus": "msp-podcast", "speaker": "", "split": "val"}) == Row(
        "Ses04M_x", None, None, "val"
    )


def test_writer_stores_the_session(tmp_path):
    clips = [(utterance("Ses02F_impro01_F000", "train", [1, 0, 0, 0], corpus="iemocap"), tone(0.3))]
    clips.append((utterance("other_1", "train", [0, 1, 0, 0]), tone(0.3)))
    write_clips(clips, tmp_path)
    sessions = {m["id"]: m["session"] for m in iter_shard_meta(tmp_path)}
    assert sessions == {"Ses02F_impro01_F000": 2, "other_1": None}


# ---------------------------------------------------------------- folds
def test_parse_folds():
    assert parse_folds("session") == "session"
    assert parse_folds("5") == 5
    for bad in ("1", "folds", "0"):
        with pytest.raises(ValueError, match="folds"):
            parse_folds(bad)


def test_session_folds_hold_out_one_session_each_and_carve_val_by_speaker():
    rows = iemocap_rows()
    assignments = fold_assignments(rows, "session", val_fraction=0.1)
    assert len(assignments) == 3
    tests = [{i for i, s in a.items() if s == "test"} for a in assignments]
    assert set().union(*tests) == {r.id for r in rows}
    assert sum(map(len, tests)) == len(rows)
    for f, a in enumerate(assignments):
        assert set(a) == {r.id for r in rows}
        assert {r.session for r in rows if a[r.id] == "test"} == {str(f + 1)}
        assert all(len(sets) == 1 for sets in split_of(a, rows, "speaker").values())  # no speaker in two sets
        counts = Counter(a.values())
        assert counts == {"test": 20, "train": 30, "val": 10}  # one speaker of the 4 training ones, not a session


def test_val_grouped_by_session_keeps_sessions_apart():
    rows = iemocap_rows(sessions=4)
    for a in fold_assignments(rows, "session", val_group="session"):
        assert all(len(sets) == 1 for sets in split_of(a, rows, "session").values())


def test_speaker_folds_keep_every_speaker_in_one_set():
    rows = [Row(f"u{n}", None, f"spk{n % 5}", "train") for n in range(50)]
    assignments = fold_assignments(rows, "speaker", val_fraction=0.2)
    assert len(assignments) == 5
    for f, a in enumerate(assignments):
        assert {r.speaker for r in rows if a[r.id] == "test"} == {f"spk{f}"}
        assert all(len(sets) == 1 for sets in split_of(a, rows, "speaker").values())
        assert Counter(a.values()) == {"test": 10, "train": 30, "val": 10}  # 0.2 x 40 = 8: one speaker (10)


def test_k_random_folds_are_equal_sized_disjoint_and_covering():
    rows = [Row(f"u{n:02d}", None, None, "train") for n in range(23)]
    folds = fold_test_ids(rows, 4)
    assert sorted(map(len, folds)) == [5, 6, 6, 6]
    assert sorted(i for f in folds for i in f) == sorted(r.id for r in rows)
    for a in fold_assignments(rows, 4, val_fraction=0.1):
        n_train = sum(v != "test" for v in a.values())
        assert Counter(a.values())["val"] == round(0.1 * n_train)


def test_fold_seed_alone_decides_the_random_folds():
    rows = [Row(f"u{n:02d}", None, None, "train") for n in range(40)]
    np.random.seed(1)
    first = fold_assignments(rows, 5, fold_seed=0)
    np.random.seed(2)  # global state (a run's seed_everything) does not enter
    assert fold_assignments(rows, 5, fold_seed=0) == first
    assert fold_assignments(rows, 5, fold_seed=1) != first


def test_validation_is_carved_from_the_training_folds():
    rows = [Row(f"u{n:02d}", None, None, "train") for n in range(30)]
    tests = fold_test_ids(rows, 3)
    for test, a in zip(tests, fold_assignments(rows, 3, val_fraction=0.25), strict=True):
        val = {i for i, s in a.items() if s == "val"}
        assert val
        assert not val & set(test)
        assert len(val) == 5  # 0.25 x 20 training rows, not a whole fold (10)


def test_carve_val_never_takes_every_group():
    rows = [Row(f"u{n}", None, f"spk{n % 2}", "train") for n in range(10)]
    val = carve_val(rows, 0.9, "speaker", seed=0)
    assert len(val) == 5


def test_official_fold_uses_the_corpus_splits():
    rows = [Row(f"t{n}", None, None, "train") for n in range(20)]
    rows += [Row(f"v{n}", None, None, "val") for n in range(4)] + [Row(f"x{n}", None, None, "test") for n in range(5)]
    rows += [Row("y0", None, None, "test2")]
    (a,) = fold_assignments(rows, "official")
    assert {s: sorted(i for i, v in a.items() if v == s) for s in ("val", "test")} == {
        "val": [f"v{n}" for n in range(4)],
        "test": [f"x{n}" for n in range(5)],
    }
    assert "y0" not in a
    assert Counter(a.values())["train"] == 20
    (b,) = fold_assignments([r for r in rows if r.split != "val"], "official", val_fraction=0.1)
    assert Counter(b.values()) == {"train": 18, "val": 2, "test": 5}


def test_session_folds_need_sessions():
    rows = [Row(f"u{n}", None, "spk", "train") for n in range(4)]
    with pytest.raises(ValueError, match="no session"):
        fold_assignments(rows, "session")


# ---------------------------------------------------------------- DataModule(split_assignment=...)
VOTES = {  # id -> votes; plurality: a0 -> 0, a1 -> 1, a2 -> 0 (tie), a3 -> 3, b0/b1 -> 2
    "a0": [5, 0, 0, 0],
    "a1": [0, 3, 1, 1],
    "a2": [2, 2, 1, 0],
    "a3": [0, 0, 1, 4],
    "b0": [0, 1, 3, 1],
    "b1": [1, 0, 4, 0],
    "c0": [1, 1, 1, 1],
}


@pytest.fixture(scope="module")
def assigned_dir(tmp_path_factory) -> tuple[Path, Path]:
    """Shards with a0..a3 in the card's test split, b0/b1 in train, c0 in val; an assignment turning them round."""
    card_split = {"a": "test", "b": "train", "c": "val"}
    clips = [(utterance(i, card_split[i[0]], v), tone(0.4)) for i, v in VOTES.items()]
    root = tmp_path_factory.mktemp("assigned")
    write_clips(clips, root)
    assignment = {"a0": "train", "a1": "train", "a2": "train", "a3": "train", "b0": "test", "b1": "val"}
    path = root / "assignment.json"  # c0 is left out
    path.write_text(json.dumps(assignment))
    return root, path


def test_datamodule_counts_and_statistics_come_from_the_assigned_train_set(assigned_dir):
    root, path = assigned_dir
    dm = SERDataModule(str(root), split_assignment=str(path), num_workers=0, max_batch_size=2, shuffle_buffer=0)
    scan = dm.assigned()
    assert scan["counts"] == {"train": 4, "val": 1, "test": 1}
    assert scan["left_out"] == 1
    assert scan["missing"] == 0
    assert dm.class_counts == [2.0, 1.0, 0.0, 1.0]
    train = np.array([VOTES[i] for i in ("a0", "a1", "a2", "a3")], dtype=float)
    dists = train / train.sum(1, keepdims=True)
    ent = [scipy_entropy(d) for d in dists]
    np.testing.assert_allclose(dm.bin_edges, np.quantile(ent, [1 / 3, 2 / 3]), rtol=1e-6)
    np.testing.assert_allclose(dm.train_mean_distribution, dists.mean(0), rtol=1e-6)
    expectation = dm.eval_expectation("test")
    assert expectation["expected"] == 1
    assert expectation["split"] == "assigned test"
    assert dm.eval_expectation("val")["expected"] == 1


def test_datamodule_streams_only_the_assigned_ids(assigned_dir):
    root, path = assigned_dir
    dm = SERDataModule(str(root), split_assignment=str(path), num_workers=0, max_batch_size=2, shuffle_buffer=0)
    dm.setup("fit")
    ids = {stage: [i for b in loader() for i in b["ids"]] for stage, loader in
           (("val", dm.val_dataloader), ("test", dm.test_dataloader), ("predict", dm.predict_dataloader))}  # fmt: skip
    assert ids == {"val": ["b1"], "test": ["b0"], "predict": ["b0"]}
    train = {i for b in dm.train_dataloader() for i in b["ids"]}
    assert train <= {"a0", "a1", "a2", "a3"}
    assert train
    assert dm.train_batches(1) == 2  # 4 assigned train samples, 2 per batch


def test_datamodule_refuses_a_bad_assignment(tmp_path, assigned_dir):
    root, _ = assigned_dir
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"a0": "training"}))
    with pytest.raises(ValueError, match="values must be one of"):
        SERDataModule(str(root), split_assignment=str(bad)).assigned()
