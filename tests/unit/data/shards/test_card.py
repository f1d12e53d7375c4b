"""The card's per-shard counts and checksums, ``verify_shards``, and errors that name the file they are about."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from shard_fixtures import tone, utterance, write_clips

from ser_lightning.data.shards.card import iter_shard_meta, label_source_stats, read_card
from ser_lightning.data.shards.verify import describe_shard, verify_shards
from ser_lightning.data.shards.writer import refresh_card

VOTES = {
    "train": [[3, 1, 0, 0], [0, 2, 2, 0], [1, 1, 1, 1]],
    "test": [[0, 0, 4, 0], [1, 0, 0, 3], [2, 2, 0, 0], [0, 1, 0, 0]],
}


@pytest.fixture
def shards(tmp_path: Path) -> Path:
    """Train (2 shards: 2 + 1 samples) and test (2 shards: 2 + 2 samples), written by write_shards."""
    clips = [
        (utterance(f"{split}{i}", split, votes), tone(0.3, 200 + 40 * i))
        for split, rows in VOTES.items()
        for i, votes in enumerate(rows)
    ]
    write_clips(clips, tmp_path / "out", maxcount=2)
    return tmp_path / "out"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _members(path: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(path) as tar:
        return tar.getmembers()


def test_card_records_every_shards_sample_count_and_sha256(shards):
    card = read_card(shards)
    assert card["shards"]["test"] == ["test-000000.tar", "test-000001.tar"]
    for name, n in [("train-000000.tar", 2), ("train-000001.tar", 1), ("test-000000.tar", 2), ("test-000001.tar", 2)]:
        assert card["shard_info"][name] == {"samples": n, "sha256": _sha256(shards / name)}
        assert len(_members(shards / name)) == 2 * n  # flac + json per sample
    assert verify_shards(shards, "test") == []


def test_refresh_card_writes_the_same_shard_info(shards):
    written = read_card(shards)
    card = json.loads((shards / "card.json").read_text())
    del card["shard_info"]  # a card from before shard_info
    (shards / "card.json").write_text(json.dumps(card))
    assert refresh_card(shards)["shard_info"] == written["shard_info"]


def test_mean_distribution_is_the_mean_of_the_train_vote_proportions(shards):
    votes = np.array(VOTES["train"], dtype=float)
    want = (votes / votes.sum(1, keepdims=True)).mean(0)
    got = read_card(shards)["label_sources"]["primary"]["mean_distribution"]
    np.testing.assert_allclose(got, want, atol=1e-15)


def _cut(path: Path, size: int) -> None:
    with path.open("r+b") as f:
        f.truncate(size)


def test_verify_shards_names_a_shard_cut_at_a_member_boundary(shards):
    shard = shards / "test-000001.tar"
    _cut(shard, _members(shard)[2].offset)  # the first sample's two members survive, no end-of-archive blocks
    (problem,) = verify_shards(shards, "test")
    assert problem == f"{shard}: no end-of-archive marker after 1 samples (cut at a member boundary?)"


def test_verify_shards_names_a_shard_cut_inside_a_member(shards):
    shard = shards / "test-000000.tar"
    flac = _members(shard)[2]
    _cut(shard, flac.offset_data + 10)
    (problem,) = verify_shards(shards, "test")
    assert problem.startswith(f"{shard}: cut inside member {flac.name} after 1 complete samples")


def test_verify_shards_names_a_changed_shard_and_a_missing_one(shards):
    data = bytearray((shards / "test-000000.tar").read_bytes())
    data[_members(shards / "test-000000.tar")[0].offset_data + 100] ^= 0xFF  # one flipped audio byte
    (shards / "test-000000.tar").write_bytes(bytes(data))
    (shards / "test-000001.tar").unlink()
    assert verify_shards(shards, "test") == [
        f"{shards / 'test-000000.tar'}: SHA-256 differs from the card's (changed after preparation)",
        f"{shards / 'test-000001.tar'}: missing",
    ]


def test_describe_shard_refuses_a_damaged_shard(shards):
    shard = shards / "train-000000.tar"
    _cut(shard, _members(shard)[2].offset)
    with pytest.raises(ValueError, match="train-000000.tar: no end-of-archive marker"):
        describe_shard(shard)


def test_corrupt_card_names_its_path(shards):
    (shards / "card.json").write_text('{"classes": ["a", "b"], "shards": {')
    with pytest.raises(ValueError, match=r"card\.json: corrupt shard card"):
        read_card(shards)
    (shards / "card.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"card\.json: not a shard card"):
        read_card(shards)


def test_iter_shard_meta_names_the_shard_of_a_cut_tar(shards):
    shard = shards / "test-000000.tar"
    flac = _members(shard)[2]
    _cut(shard, flac.offset_data + 10)
    with pytest.raises(ValueError, match=r"test-000000\.tar: damaged shard"):
        list(iter_shard_meta(shards, "test"))


def _rewrite_json(shard: Path, drop: str) -> str:
    """Remove ``drop`` from the first sample's JSON; return that member's name."""
    with tarfile.open(shard) as tar:
        payload = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    first_json = next(m.name for m, _ in payload if m.name.endswith(".json"))
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as tar:
        for member, data in payload:
            if member.name == first_json:
                meta = json.loads(data)
                del meta[drop]
                data = json.dumps(meta).encode()
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    return first_json


def test_a_sample_without_votes_is_named_by_shard_and_member(shards):
    member = _rewrite_json(shards / "train-000001.tar", "votes")
    with pytest.raises(ValueError, match=rf"sample 'train\d' of .*train-000001\.tar \(member {member}\) has no votes"):
        list(iter_shard_meta(shards, "train", sources=["primary"]))
    with pytest.raises(ValueError, match=r"train-000001\.tar .*has no votes\['primary'\]"):
        refresh_card(shards)


def test_label_source_stats_names_a_sample_without_entropy():
    metas = [{"id": "u1", "votes": {"primary": [1, 0]}, "entropy": {"primary": 0.0}}, {"id": "u2", "votes": {}}]
    with pytest.raises(ValueError, match=r"sample 'u2' has no votes\['primary'\]"):
        label_source_stats(metas, ["primary"], 2)
