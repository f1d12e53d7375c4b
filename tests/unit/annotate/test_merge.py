"""ser-annotate merge: synthetic and combined sources, exact distributions, null synthetic, the n limit, the card."""

import json
import sqlite3
import tarfile

import numpy as np
import pytest
from scipy.stats import entropy as scipy_entropy
from shard_fixtures import write_test_shards

from ser_lightning.annotate.merge import EXACT_RULE, merge_store, synthetic_distribution, synthetic_votes
from ser_lightning.data.shards import iter_shard_meta, read_card, refresh_card
from ser_lightning.data.shards.verify import file_sha256, verify_shards
from ser_lightning.data.stream.datamodule import SERDataModule

CLASSES = ["Anger", "Happiness", "Neutral", "Sadness"]
SCHEMA = """CREATE TABLE annotations (id TEXT, backend TEXT, model TEXT, mode TEXT, k INTEGER, persona INTEGER,
    temperature REAL, label TEXT, probabilities TEXT, raw TEXT, reason TEXT, created TEXT,
    UNIQUE (id, backend, model, mode, k))"""


def make_store(path, rows):
    """A store written by plain SQL: rows of (id, mode, k, label, probabilities or None)."""
    with sqlite3.connect(path) as conn:
        conn.execute(SCHEMA)
        conn.executemany(
            "INSERT INTO annotations VALUES (?, 'gemini', 'm', ?, ?, 0, 0.5, ?, ?, 'raw', NULL, 'now')",
            [(uid, mode, k, label, None if p is None else json.dumps(p)) for uid, mode, k, label, p in rows],
        )
    conn.close()
    return path


# sample mode: train.0000 has 3 valid answers and an invalid one (k=2); train.0001 only an invalid one;
# train.0002 none at all; every other utterance two "Happiness" answers (k=0, 1) and a "Neutral" one (k=2)
SPECIAL = {
    "train.0000": [(0, "Anger"), (1, "Anger"), (2, None), (3, "Sadness")],
    "train.0001": [(0, None)],
    "train.0002": [],
}
SIZES = {"train": [4, 2], "val": [3]}
IDS = [f"train.{i:04d}" for i in range(6)] + [f"val.{i:04d}" for i in range(3)]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_test_shards(tmp_path_factory.mktemp("in"), SIZES)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    rows = []
    for uid in IDS:
        answers = SPECIAL.get(uid, [(0, "Happiness"), (1, "Happiness"), (2, "Neutral")])
        rows += [(uid, "sample", k, label, None) for k, label in answers]
    # a second annotator (exact mode) on val.0000 only
    rows += [("val.0000", "exact", 0, "Anger", [0.5, 0.5, 0.0, 0.0])]
    rows += [("val.0000", "exact", 1, None, [0.1, 0.2, 0.3, 0.4])]
    return make_store(tmp_path_factory.mktemp("store") / "store.sqlite", rows)


@pytest.fixture(scope="module")
def merged(shards, store, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "merged"
    card = merge_store(store, shards, out, mode="sample")
    return out, card


def metas(shard_dir):
    return {m["id"]: m for m in iter_shard_meta(shard_dir)}


def members(shard_dir):
    out = {}
    for path in sorted(shard_dir.glob("*.tar")):
        with tarfile.open(path) as tar:
            out.update({(path.name, m.name): tar.extractfile(m).read() for m in tar if m.isfile()})
    return out


def test_votes_distribution_and_entropy_of_synthetic_and_combined(shards, merged):
    before, after = metas(shards), metas(merged[0])
    expected_synthetic = {"train.0000": [2.0, 0.0, 0.0, 1.0]}
    for uid in IDS:
        if uid in ("train.0001", "train.0002"):
            continue
        synthetic = expected_synthetic.get(uid, [0.0, 2.0, 1.0, 0.0])
        human = before[uid]["votes"]["primary"]
        meta = after[uid]
        assert meta["votes"]["synthetic"] == synthetic
        np.testing.assert_allclose(meta["distribution"]["synthetic"], np.array(synthetic) / sum(synthetic))
        assert meta["entropy"]["synthetic"] == pytest.approx(scipy_entropy(synthetic))
        combined = np.add(human, synthetic)  # each annotation one vote: 5 human + the valid synthetic ones
        assert meta["votes"]["combined"] == combined.tolist()
        np.testing.assert_allclose(meta["distribution"]["combined"], combined / combined.sum())
        assert meta["entropy"]["combined"] == pytest.approx(scipy_entropy(combined))
        assert meta["votes"]["primary"] == human  # the human sources are untouched
        assert meta["distribution"]["primary"] == before[uid]["distribution"]["primary"]


def test_no_valid_answer_or_no_annotation_gives_null_synthetic_and_human_combined(shards, merged):
    before, after = metas(shards), metas(merged[0])
    for uid in ("train.0001", "train.0002"):
        meta = after[uid]
        assert meta["votes"]["synthetic"] is None
        assert meta["distribution"]["synthetic"] is None
        assert meta["entropy"]["synthetic"] is None
        assert meta["votes"]["combined"] == before[uid]["votes"]["primary"]
        assert meta["distribution"]["combined"] == pytest.approx(before[uid]["distribution"]["primary"])


def test_audio_bytes_are_copied_and_other_fields_kept(shards, merged):
    src, dst = members(shards), members(merged[0])
    assert set(src) == set(dst)
    flacs = [key for key in src if key[1].endswith(".flac")]
    assert len(flacs) == len(IDS)
    assert all(src[key] == dst[key] for key in flacs)
    before, after = metas(shards), metas(merged[0])
    for uid in IDS:
        for field in ("corpus", "split", "transcript", "speaker", "duration", "classes", "vad", "vad_scale"):
            assert after[uid][field] == before[uid][field]


def test_card_label_sources_and_null_counts(shards, merged):
    out, card = merged
    old = read_card(shards)
    assert card == read_card(out)
    assert card["sources"] == ["primary", "combined", "synthetic"]
    assert card["num_samples"] == old["num_samples"]
    assert card["shards"] == old["shards"]
    assert card["stats"] == old["stats"]  # primary votes unchanged
    assert card["null_labels"] == {"synthetic": {"train": 2, "val": 0}}
    after = metas(out)
    train = [after[f"train.{i:04d}"] for i in range(6)]
    # synthetic: the 4 non-null train samples; plurality classes 0 (train.0000) and 1 (three "Happiness" ones)
    labelled = [m for m in train if m["votes"]["synthetic"] is not None]
    stats = card["label_sources"]["synthetic"]
    assert stats["class_counts"] == [1, 3, 0, 0]
    np.testing.assert_allclose(
        stats["tertile_edges"], np.quantile([scipy_entropy(m["votes"]["synthetic"]) for m in labelled], [1 / 3, 2 / 3])
    )
    mean = np.mean([np.divide(m["votes"]["synthetic"], sum(m["votes"]["synthetic"])) for m in labelled], axis=0)
    np.testing.assert_allclose(stats["mean_distribution"], mean)
    combined = card["label_sources"]["combined"]
    np.testing.assert_allclose(
        combined["tertile_edges"], np.quantile([scipy_entropy(m["votes"]["combined"]) for m in train], [1 / 3, 2 / 3])
    )
    assert sum(combined["class_counts"]) == 6
    for name, info in card["shard_info"].items():
        assert info["sha256"] == file_sha256(out / name)
    assert all(verify_shards(out, split) == [] for split in card["shards"])
    assert card["annotations"]["annotated"] == 8
    assert card["annotations"]["utterances"] == 9
    assert card["annotations"]["valid_answers"] == 3 + 6 * 3
    assert card["annotations"]["invalid_answers"] == 2
    assert (out / "rejected.jsonl").read_bytes() == (shards / "rejected.jsonl").read_bytes()


def test_the_card_is_as_refresh_card_writes_it(merged, tmp_path):
    out, card = merged
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in out.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    assert refresh_card(copy) == card


def test_n_keeps_only_the_first_n_annotations(shards, store, tmp_path):
    merge_store(store, shards, tmp_path / "n2", n=2, mode="sample")
    after = metas(tmp_path / "n2")
    assert after["train.0000"]["votes"]["synthetic"] == [2.0, 0.0, 0.0, 0.0]  # k=3 (Sadness) is cut
    assert after["val.0001"]["votes"]["synthetic"] == [0.0, 2.0, 0.0, 0.0]  # k=2 (Neutral) is cut
    card = read_card(tmp_path / "n2")
    assert card["annotations"]["n"] == 2
    assert card["annotations"]["valid_answers"] == 2 + 6 * 2


def test_exact_mode_rows_are_a_distribution_of_their_own_not_votes(shards, store, tmp_path):
    card = merge_store(store, shards, tmp_path / "exact", mode="exact")
    before, after = metas(shards), metas(tmp_path / "exact")
    mean = np.mean([[0.5, 0.5, 0.0, 0.0], [0.1, 0.2, 0.3, 0.4]], axis=0)  # k=1 has no label but a distribution
    meta = after["val.0000"]
    np.testing.assert_allclose(meta["distribution"]["synthetic_exact"], mean)
    np.testing.assert_allclose(meta["votes"]["synthetic_exact"], mean)  # sums to 1: the readers' presence field
    assert sum(meta["votes"]["synthetic_exact"]) == pytest.approx(1.0)
    assert meta["entropy"]["synthetic_exact"] == pytest.approx(scipy_entropy(mean))
    assert set(meta["votes"]) == {"primary", "synthetic_exact"}  # not added to the human votes: no combined
    assert meta["votes"]["primary"] == before["val.0000"]["votes"]["primary"]
    assert after["val.0001"]["votes"]["synthetic_exact"] is None
    assert card["sources"] == ["primary", "synthetic_exact"]
    assert card["null_labels"] == {"synthetic_exact": {"train": 6, "val": 2}}
    assert card["label_sources"]["synthetic_exact"]["rule"] == EXACT_RULE
    assert card["annotations"]["label_sources"] == ["synthetic_exact"]
    assert card["annotations"]["valid_answers"] == 2
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in (tmp_path / "exact").iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    assert refresh_card(copy) == card


def test_synthetic_votes_count_labels_and_distributions_are_checked():
    rows = [(0, "Anger", [0.9, 0.1, 0.0, 0.0]), (1, "Sadness", None), (2, "Joy", None), (3, None, [0.2, 0.8, 0.0, 0.0])]
    votes, valid = synthetic_votes(rows, CLASSES)
    assert votes.tolist() == [1.0, 0.0, 0.0, 1.0]  # integer counts; a row's probabilities are no vote
    assert valid == 2
    dist, valid = synthetic_distribution(rows, CLASSES)
    np.testing.assert_allclose(dist, [0.55, 0.45, 0.0, 0.0])
    assert valid == 2
    bad = [(0, "Anger", [0.5, 0.5]), (1, "Anger", [-1.0, 1.0, 0.5, 0.5]), (2, "Anger", [0.0] * 4), (3, "Anger", None)]
    assert synthetic_distribution(bad, CLASSES) == (None, 0)


def test_an_ambiguous_store_or_the_input_as_output_is_refused(shards, store, tmp_path):
    with pytest.raises(ValueError, match="several annotators"):
        merge_store(store, shards, tmp_path / "x")
    with pytest.raises(ValueError, match="must differ"):
        merge_store(store, shards, shards, mode="sample")
    with pytest.raises(FileExistsError, match="not written by ser-annotate merge"):
        merge_store(store, shards, write_test_shards(tmp_path / "prepared", {"train": [1]}), mode="sample")


def test_a_rerun_replaces_the_previous_merge(shards, store, tmp_path):
    merge_store(store, shards, tmp_path / "again", mode="sample")
    first = members(tmp_path / "again")
    merge_store(store, shards, tmp_path / "again", mode="sample")
    assert members(tmp_path / "again") == first  # byte-identical


def test_datamodule_skips_null_synthetic_samples_with_a_count(merged, caplog):
    out, _ = merged
    dm = SERDataModule(str(out), label_source="synthetic", num_workers=0, max_batch_size=2)
    assert dm.null_samples("train") == 2
    assert dm.null_samples("val") == 0
    with caplog.at_level("INFO"):
        dm.setup("fit")
    assert "is null in 2 of the 6 'train' samples" in caplog.text
    dm.splits["val"] = "train"  # evaluate the train split: 4 scored, 2 skipped with their reason
    batches = list(dm.val_dataloader())
    scored = [uid for b in batches for uid in b["ids"]]
    skipped = [r for b in batches for r in b["skipped"]]
    assert sorted(scored) == ["train.0000", "train.0003", "train.0004", "train.0005"]
    assert sorted(r["key"] for r in skipped) == ["train_0001", "train_0002"]
    assert all("'synthetic' is null" in r["reason"] for r in skipped)
    assert len(scored) + len(skipped) == dm.num_samples("train")  # the completeness check's sum
    train = list(SERDataModule(str(out), label_source="synthetic", num_workers=0, train_batches_per_epoch=5,
                               shuffle_buffer=0, max_batch_size=2).train_dataloader())  # fmt: skip
    assert len(train) == 5
    assert not {"train.0001", "train.0002"} & {u for b in train for u in b["ids"]}


def test_datamodule_refuses_a_train_split_without_any_label_of_the_source(shards, store, tmp_path):
    merge_store(store, shards, tmp_path / "exact", mode="exact")  # no train utterance has an exact answer
    dm = SERDataModule(str(tmp_path / "exact"), label_source="synthetic_exact", num_workers=0)
    with pytest.raises(ValueError, match="null in every train sample"):
        dm.train_dataloader()
    assert dm.bin_edges is None
    assert dm.class_counts is None


def test_dime_index_over_a_nullable_source_leaves_null_utterances_out(merged, tmp_path):
    import json
    import shutil

    from ser_lightning.data.dime.index import build_dime_index

    copy = tmp_path / "merged"
    shutil.copytree(merged[0], copy)
    index_dir = build_dime_index(copy, label_source="synthetic", ratio=1.0)
    index = json.loads((index_dir / "index.json").read_text())
    with_label = {uid for uid, m in metas(copy).items() if uid.startswith("train.") and m["votes"]["synthetic"]}
    assert "train.0002" not in with_label  # no valid synthetic answer
    # utterances with a null synthetic label are neither counted for the minority classes nor pooled for mixing
    assert set(index["dominant"]) == with_label
    assert sum(index["counts"].values()) == len(with_label)
    assert set(index["pool"]["ids"]) <= with_label
