"""Metrics under DDP: 2 gloo CPU processes with uneven samples per rank equal one process over the same data."""

import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from scipy.stats import entropy as scipy_entropy

from ser_lightning.metrics import WIDTH_EDGES, AmbiguityBinnedMetrics

pytestmark = pytest.mark.integration

EDGES = [0.6, 1.0]
CLASSES = ["Angry", "Sad", "Happy", "Neutral", "Surprise", "Other"]
TOTAL = 128


def _data():
    rng = np.random.default_rng(11)
    n = TOTAL
    votes = rng.multinomial(9, rng.dirichlet(np.ones(6) * 0.6), size=n).astype(float)
    preds = rng.dirichlet(np.ones(6), size=n)
    target = votes / votes.sum(1, keepdims=True)
    entropy = scipy_entropy(target, axis=1)  # the stored float64 entropy the binned metric bins on
    return (
        torch.tensor(preds, dtype=torch.float32),
        torch.tensor(target, dtype=torch.float32),
        torch.tensor(entropy, dtype=torch.float64),
    )


def _metrics():
    return {"binned": AmbiguityBinnedMetrics(num_classes=6, bin_edges=EDGES, classes=CLASSES, width_edges=WIDTH_EDGES)}


def _flatten(results):
    flat = {}
    for name, value in results.items():
        if isinstance(value, dict):
            flat.update({f"{name}.{k}": float(v) for k, v in value.items()})
        else:
            flat[name] = float(value)
    return flat


def _compute(metrics, preds, target, entropy, batch=16):
    for i in range(0, len(preds), batch):
        for m in metrics.values():
            m.update(preds[i : i + batch], target[i : i + batch], entropy[i : i + batch])
    return _flatten({name: m.compute() for name, m in metrics.items()})


def _worker(rank, world, port, out_dir, first):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    preds, target, entropy = _data()
    lo = 0 if rank == 0 else first
    hi = first if rank == 0 else TOTAL
    result = _compute(_metrics(), preds[lo:hi], target[lo:hi], entropy[lo:hi])
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("first", [37, 0], ids=["uneven", "one-rank-empty"])
def test_two_process_gloo_equals_single_process(tmp_path, first):
    args = (2, _free_port(), str(tmp_path), first)
    mp.start_processes(_worker, args=args, nprocs=2, join=True, start_method="spawn")
    preds, target, entropy = _data()
    single = _compute(_metrics(), preds, target, entropy)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got.keys() == single.keys()
        for key, value in single.items():
            assert got[key] == pytest.approx(value, abs=1e-6, nan_ok=True), (rank, key)
    assert single["binned.count"] == TOTAL
    assert sum(single[f"binned.wbin{b}/count"] for b in (1, 2, 3)) == TOTAL
    assert {"binned.uar", "binned.f1/Other", "binned.wbin3/uar", "binned.js", "binned.kl"} <= single.keys()
