"""``ser-index`` on tiny shards, and the DiME mixer across two gloo processes."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from object_store import s3_store  # noqa: F401 (the s3_store fixture)
from shard_fixtures import RATE, utterance, write_clips

from ser_lightning.cli.index import main
from ser_lightning.data.dime.index import FeatureConfig, build_dime_index
from ser_lightning.data.dime.mixer import DimeMixer

pytestmark = pytest.mark.integration


# --------------------------------------------------------------------------------------------
# Tiny shards (docs/shard-format.md)
# --------------------------------------------------------------------------------------------


def _utterance(uid: str, votes: list[float], freq: float, length: int, rng: np.random.Generator) -> dict:
    t = np.arange(length) / RATE
    audio = 0.3 * np.sin(2 * np.pi * freq * t) + 0.005 * rng.standard_normal(length)
    pcm = np.round(audio * 32768).clip(-32768, 32767).astype(np.int16)
    return {"id": uid, "votes": votes, "pcm": pcm, "transcript": f"utterance {uid} says something"}


def _corpus() -> dict[str, list[dict]]:
    """Train: 30 Neutral, 10 Happiness, 7 Anger + 1 Anger/Happiness tie, 3 Sadness; a few val utterances.

    Threshold 0.3 x 30 = 9: Anger (8) and Sadness (3) are minorities. Anger's clips form two acoustic
    clusters of four (300 Hz and 1,500 Hz), so their 3 nearest neighbours are known.
    """
    rng = np.random.default_rng(0)
    train = []
    for n in range(30):
        train.append(_utterance(f"neu.{n:02d}", [0, 1, 4, 0], 500 + 3 * n, 3200, rng))
    for n in range(10):
        train.append(_utterance(f"hap.{n:02d}", [0, 3, 1, 0], 700 + 3 * n, 3200, rng))
    for n in range(7):
        train.append(_utterance(f"ang.{n:02d}", [3, 0, 0, 1], (300 if n < 4 else 1500) + n, 3200, rng))
    train.append(_utterance("ang.tie", [2, 2, 0, 0], 1510, 3200, rng))  # tie -> first class (Anger)
    for n in range(3):
        train.append(_utterance(f"sad.{n:02d}", [0, 0, 1, 2], 200 + 7 * n, 2400 + 800 * n, rng))
    val = [_utterance(f"val.{n:02d}", [0, 0, 0, 3], 250, 3200, rng) for n in range(4)]
    return {"train": train, "val": val}


def _write_corpus(root: Path, corpus: dict[str, list[dict]]) -> None:
    clips = [
        (utterance(u["id"], split, u["votes"], corpus="toy", transcript=u["transcript"]), u["pcm"])
        for split, utts in corpus.items()
        for u in utts
    ]
    write_clips(clips, root, maxcount=20)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[dict]]]:
    root = tmp_path_factory.mktemp("shards")
    corpus = _corpus()
    _write_corpus(root, corpus)
    return root, corpus


def _load(root: Path, sub: str = "dime") -> dict:
    return json.loads((root / sub / "index.json").read_text())


# --------------------------------------------------------------------------------------------
# ser-index
# --------------------------------------------------------------------------------------------


def test_ser_index_writes_index_and_pool(shards: tuple[Path, dict]) -> None:
    root, corpus = shards
    assert main([str(root), "--features", "acoustic"]) == 0
    index = _load(root)
    train = {u["id"]: u for u in corpus["train"]}
    assert set(index["dominant"]) == set(train)  # the training split only
    assert index["dominant"]["ang.tie"] == "Anger"
    assert index["counts"] == {"Anger": 8, "Happiness": 10, "Neutral": 30, "Sadness": 3}
    assert index["minority_classes"] == ["Anger", "Sadness"]
    assert index["deficit"] == {"Anger": 1, "Happiness": 0, "Neutral": 0, "Sadness": 6}
    assert index["train_size"] == 51
    assert index["features"]["blocks"] == ["acoustic"]

    pool = index["pool"]
    assert sorted(pool["ids"]) == sorted(u for u, c in index["dominant"].items() if c in {"Anger", "Sadness"})
    assert [m["id"] for m in pool["meta"]] == pool["ids"]
    audio = np.load(root / "dime" / pool["audio"], mmap_mode="r")
    offsets = np.load(root / "dime" / pool["offsets"])
    assert offsets.shape == (len(pool["ids"]) + 1,)
    assert offsets[-1] == audio.shape[0]
    for p, uid in enumerate(pool["ids"]):
        np.testing.assert_array_equal(audio[offsets[p] : offsets[p + 1]], train[uid]["pcm"])  # lossless

    low = {f"ang.{n:02d}" for n in range(4)}
    high = {f"ang.{n:02d}" for n in range(4, 7)} | {"ang.tie"}
    for uid in pool["ids"]:
        nn = index["neighbours"][uid]
        assert uid not in nn
        assert {index["dominant"][j] for j in nn} == {index["dominant"][uid]}
        assert len(nn) == (3 if index["dominant"][uid] == "Anger" else 2)  # Sadness has only 2 others
        if uid in low | high:
            assert set(nn) == (low if uid in low else high) - {uid}  # the acoustic cluster


def test_ser_index_lexical_and_encoder_features(shards: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = shards
    assert main([str(root), "--features", "acoustic,lexical", "--k", "2", "--quiet"]) == 0
    index = _load(root)
    assert index["k"] == 2
    assert all(len(v) == 2 for v in index["neighbours"].values())

    def by_length(audio: np.ndarray, sample_rate: int, transcript: str) -> np.ndarray:
        return np.array([len(audio) / sample_rate])

    out = build_dime_index(root, features=FeatureConfig(blocks=("encoder",)), encoder=by_length)
    index = _load(out.parent)
    assert index["features"]["encoder"].endswith("by_length")
    # Sadness clips are 2400, 3200, 4000 samples long: the middle one is nearest to both others.
    assert index["neighbours"]["sad.00"][0] == "sad.01"
    assert index["neighbours"]["sad.02"][0] == "sad.01"


@pytest.mark.parametrize(
    "argv",
    [["--features", "encoder"], ["--features", "bogus"], ["--label-source", "merged"], ["--split", "test"]],
)
def test_ser_index_usage_errors(shards: tuple[Path, dict], argv: list[str]) -> None:
    with pytest.raises(SystemExit) as err:
        main([str(shards[0]), "--quiet", *argv])
    assert err.value.code == 2


def test_mixer_on_built_index_uses_pool_audio(shards: tuple[Path, dict]) -> None:
    root, corpus = shards
    build_dime_index(root)
    train = {u["id"]: u for u in corpus["train"]}
    mixer = DimeMixer(root / "dime")
    assert mixer.amounts == {"Anger": 1, "Happiness": 0, "Neutral": 0, "Sadness": 6}
    for n in range(mixer.total):
        s = mixer.synthetic(0, n)
        d = s["meta"]["dime"]
        xi, xj = (train[u]["pcm"].astype(np.float32) / 32768 for u in (d["i"], d["j"]))
        length = min(len(xi), len(xj))
        np.testing.assert_allclose(s["audio"], d["lambda"] * xi[:length] + (1 - d["lambda"]) * xj[:length], atol=1e-6)


# --------------------------------------------------------------------------------------------
# Two gloo processes
# --------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stream(n: int) -> list[dict]:
    return [
        {"id": f"real-{i}", "audio": np.zeros(4, np.float32), "meta": {}, "target": np.zeros(4, np.float32)}
        for i in range(n)
    ]


def _summary(samples: list[dict]) -> list[dict]:
    return [
        {
            "id": s["id"],
            "dime": s["meta"]["dime"],
            "audio": float(np.abs(s["audio"]).sum()),
            "target": s["target"].tolist(),
        }
        for s in samples
        if s["id"].startswith("dime-")
    ]


def _rank_main(rank: int, index_dir: str, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        mixer = DimeMixer(index_dir, amount=0.5, seed=11)
        runs = []
        for epoch in (1, 1, 2):
            mixer.set_epoch(epoch)
            runs.append(_summary(list(mixer(iter(_stream(26))))))
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps({"world": dist.get_world_size(), "runs": runs}))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_mixer_two_gloo_ranks(shards: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = shards
    index_dir = build_dime_index(root)
    mp.spawn(_rank_main, args=(str(index_dir), _free_port(), str(tmp_path)), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world"] for r in results] == [2, 2]
    reference = DimeMixer(index_dir, amount=0.5, seed=11)
    assert reference.total == 26  # round(0.5 x 51)
    for run, epoch in ((0, 1), (2, 2)):
        per_rank = [r["runs"][run] for r in results]
        ids = [s["id"] for samples in per_rank for s in samples]
        assert len(ids) == len(set(ids)) == reference.total  # disjoint, together the configured amount
        assert {s["id"] for s in per_rank[0]} == {f"dime-{epoch}-{n}" for n in range(0, 26, 2)}
        expected = _summary([reference.synthetic(epoch, n) for n in range(reference.total)])
        got = sorted((s for samples in per_rank for s in samples), key=lambda s: int(s["id"].split("-")[2]))
        assert got == expected  # same samples as a single process would make
    for r in results:
        assert r["runs"][0] == r["runs"][1]  # reproducible within the rank
        lam1 = [s["dime"]["lambda"] for s in r["runs"][0]]
        lam2 = [s["dime"]["lambda"] for s in r["runs"][2]]
        assert all(a != b for a, b in zip(lam1, lam2, strict=True))  # fresh λ each epoch


def test_ser_index_rejects_duplicate_ids(tmp_path: Path) -> None:
    _write_corpus(tmp_path, {"train": [_utterance("dup.0", [1, 0, 0, 0], 300, 1600, np.random.default_rng(1))]})
    shutil.copy(tmp_path / "train-000000.tar", tmp_path / "train-000001.tar")  # the same utterance in a 2nd shard
    card = json.loads((tmp_path / "card.json").read_text())
    card["shards"]["train"].append("train-000001.tar")
    (tmp_path / "card.json").write_text(json.dumps(card))
    with pytest.raises(SystemExit) as err:
        main([str(tmp_path), "--quiet"])
    assert err.value.code == 2


def test_an_index_of_remote_shards_equals_the_local_one_and_loads_from_the_store(shards, tmp_path, s3_store):  # noqa: F811
    root, _ = shards
    local_out, remote_out = tmp_path / "local", tmp_path / "remote"
    url = s3_store.upload(root, "toy")
    assert main([str(root), "--features", "acoustic", "--out", str(local_out), "--quiet"]) == 0
    assert main([url, "--features", "acoustic", "--out", str(remote_out), "--quiet"]) == 0
    assert json.loads((remote_out / "index.json").read_text()) == json.loads((local_out / "index.json").read_text())
    with pytest.raises(SystemExit):  # a remote index needs a local --out
        main([url, "--features", "acoustic", "--quiet"])
    index_url = s3_store.upload(remote_out, "toy-dime")  # the index beside the shards, in the store
    local, remote = DimeMixer(local_out, amount=0.5, seed=3), DimeMixer(index_url, amount=0.5, seed=3)
    assert remote.total == local.total > 0
    for n in range(local.total):
        a, b = local.synthetic(0, n), remote.synthetic(0, n)
        np.testing.assert_array_equal(a["audio"], b["audio"])
        np.testing.assert_array_equal(a["target"], b["target"])
