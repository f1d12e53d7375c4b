"""``merged`` needs its rule in the card (else re-run ser-prepare); ``consensus`` reaches the batch as a class index."""

import json
import shutil

import numpy as np
import pytest
import torch
from shard_fixtures import CLASSES, tone, utterance, write_clips

from ser_lightning.data.shards import refresh_card
from ser_lightning.data.stream.batching import Collate
from ser_lightning.data.stream.datamodule import SERDataModule

RULE = {"name": "authors-weighted", "primary_weight": 0.95, "secondary_weight": 0.05}
CONSENSUS = {"t0": "Anger", "t1": None, "t2": "Sadness", "v0": "Happiness", "v1": None}


def _record(uid: str, split: str, votes: list[float]):
    rec = utterance(uid, split, votes, consensus=CONSENSUS[uid])
    rec.votes["merged"] = np.asarray(votes, dtype=np.float64) + 0.5
    return rec


@pytest.fixture(scope="module")
def old_dir(tmp_path_factory):
    """Shards with a ``merged`` source and a card without its rule (as an older ser-prepare wrote them)."""
    train = [[2, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 3]]
    clips = [(_record(f"t{n}", "train", v), tone(0.5)) for n, v in enumerate(train)]
    clips += [(_record(f"v{n}", "val", [1, 1, 0, 0]), tone(0.5)) for n in range(2)]
    root = tmp_path_factory.mktemp("old")
    write_clips(clips, root)
    return root


def _with_rule(src, dst, rule):
    shutil.copytree(src, dst)
    card = json.loads((dst / "card.json").read_text())
    card["label_sources"]["merged"]["rule"] = rule
    (dst / "card.json").write_text(json.dumps(card))
    return dst


def test_merged_from_a_card_without_the_rule_is_refused(old_dir):
    assert "rule" not in json.loads((old_dir / "card.json").read_text())["label_sources"]["merged"]
    with pytest.raises(ValueError, match=r"card.json: label_source 'merged' .* no rule.*Re-run `ser-prepare"):
        SERDataModule(str(old_dir), label_source="merged").setup("fit")
    with pytest.raises(ValueError, match="Re-run `ser-prepare"):
        _ = SERDataModule(str(old_dir), label_source="merged").bin_edges  # the CLI links it before setup
    SERDataModule(str(old_dir), label_source="primary").setup("fit")  # primary is not affected


def test_merged_with_another_rule_name_is_refused(old_dir, tmp_path):
    other = _with_rule(old_dir, tmp_path / "other", {"name": "full-vote-secondaries"})
    with pytest.raises(ValueError, match="rule 'full-vote-secondaries'"):
        SERDataModule(str(other), label_source="merged").setup("fit")


def test_merged_with_the_rule_is_accepted_and_refresh_card_keeps_it(old_dir, tmp_path):
    new = _with_rule(old_dir, tmp_path / "new", RULE)
    dm = SERDataModule(str(new), label_source="merged", num_workers=0)
    dm.setup("fit")
    assert dm.card["label_sources"]["merged"]["rule"] == RULE
    assert refresh_card(new)["label_sources"]["merged"]["rule"] == RULE
    assert json.loads((new / "card.json").read_text())["label_sources"]["merged"]["rule"] == RULE


def test_the_batch_carries_consensus_class_indices(old_dir, tmp_path):
    new = _with_rule(old_dir, tmp_path / "new", RULE)
    dm = SERDataModule(str(new), label_source="merged", num_workers=0)
    dm.setup("validate")
    batches = [b for b in dm.val_dataloader() if b["ids"]]
    got = {i: int(c) for b in batches for i, c in zip(b["ids"], b["consensus"], strict=True)}
    assert got == {"v0": CLASSES.index("Happiness"), "v1": -1}
    assert all(b["consensus"].dtype == torch.long for b in batches)


def _sample(uid, **meta):
    meta = {"id": uid, "classes": CLASSES, "votes": {"primary": [1, 0, 0, 0]}, "entropy": {"primary": 0.0}, **meta}
    return {"id": uid, "audio": np.zeros(4, dtype=np.float32), "meta": meta, "target": np.array([1, 0, 0, 0.0])}


def test_collate_consensus_key():
    samples = [
        _sample("a", consensus="Sadness"),
        _sample("b", consensus=None),
        _sample("c"),  # written before consensus existed
        _sample("d", consensus="Anger", dime={"partner": "x"}),  # a DiME mix has no utterance's label
        _sample("e", consensus="Neutral"),
    ]
    batch = Collate("primary")(samples)
    assert batch["consensus"].dtype == torch.long
    assert batch["consensus"].tolist() == [3, -1, -1, -1, 2]
    with pytest.raises(ValueError, match="consensus 'Calm' is not one of its classes"):
        Collate("primary")([_sample("f", consensus="Calm")])
