"""SERDataModule under DDP: 2 gloo CPU processes x 2 DataLoader workers.

Evaluation splits give every sample exactly once over ranks and workers (a 1-shard split of 13 clips,
fewer shards than ranks x workers); training gives every rank the same number of batches per epoch
over 3 uneven shards, both through the loaders directly and through a Lightning ``Trainer(strategy="ddp")``.
"""

from __future__ import annotations

import json
import math
import os
import socket
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from shard_fixtures import CLASSES, write_test_shards

from ser_lightning.data.stream.datamodule import SERDataModule

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

SHARDS = {"train": [23, 5, 12], "val": [13]}  # uneven train shards; one val shard for 2 ranks x 2 workers
WORLD, WORKERS, EPOCHS = 2, 2, 2


def _datamodule(shards: str) -> SERDataModule:
    return SERDataModule(shards, max_batch_seconds=3.0, max_batch_size=4, num_workers=WORKERS, shuffle_buffer=8)


class _Recorder(L.LightningModule):
    """Collects training and validation ids per epoch; no collective calls per step."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, len(CLASSES))
        self.train_ids: list[list[str]] = []
        self.val_ids: list[list[str]] = []

    def on_train_epoch_start(self) -> None:
        self.train_ids.append([])

    def training_step(self, batch, batch_idx):
        self.train_ids[-1].append(batch["ids"])
        logits = self.layer(batch["audio"].mean(1, keepdim=True))
        return torch.nn.functional.kl_div(logits.log_softmax(-1), batch["targets"], reduction="batchmean")

    def on_validation_epoch_start(self) -> None:
        self.val_ids.append([])

    def validation_step(self, batch, batch_idx):
        self.val_ids[-1] += batch["ids"]

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _worker(rank: int, ports: tuple[int, int], shards: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    mp.set_start_method("fork", force=True)  # DataLoader workers: a spawned parent would make them spawn too (slow)
    env = {"MASTER_ADDR": "127.0.0.1", "WORLD_SIZE": str(WORLD), "RANK": str(rank), "LOCAL_RANK": str(rank)}
    os.environ.update(env, NODE_RANK="0", MASTER_PORT=str(ports[0]))

    # 1. the loaders themselves, rank and world size from torch.distributed
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    dm = _datamodule(shards)
    dm.setup("fit")
    val_ids = [i for batch in dm.val_dataloader() for i in batch["ids"]]
    train = dm.train_dataloader()
    passes = [[batch["ids"] for batch in train] for _ in range(EPOCHS)]
    counts = [None] * WORLD
    dist.all_gather_object(counts, [len(p) for p in passes])
    dist.destroy_process_group()

    # 2. the same under a Lightning Trainer (DDP launched externally: LOCAL_RANK is set)
    os.environ["MASTER_PORT"] = str(ports[1])
    module = _Recorder()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=WORLD,
        strategy="ddp",
        max_epochs=EPOCHS,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=_datamodule(shards))
    result = {
        "val_ids": val_ids,
        "passes": passes,
        "gathered_counts": counts,
        "expected_batches": dm.train_batches(WORLD),
        "trainer_train_ids": module.train_ids,
        "trainer_val_ids": module.val_ids,
    }
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    shards = write_test_shards(tmp_path_factory.mktemp("shards"), SHARDS, max_seconds=1.2)
    out = tmp_path_factory.mktemp("out")
    ports = (_free_port(), _free_port())
    mp.start_processes(_worker, args=(ports, str(shards), str(out)), nprocs=WORLD, join=True, start_method="spawn")
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)]


def test_eval_split_is_covered_exactly_once_over_ranks_and_workers(ranks):
    union = [i for r in ranks for i in r["val_ids"]]
    assert sorted(union) == [f"val.{n:04d}" for n in range(13)]
    assert all(r["val_ids"] for r in ranks)  # a 1-shard split still feeds both ranks


def test_train_gives_every_rank_the_same_batch_count_on_uneven_shards(ranks):
    expected = ranks[0]["expected_batches"]
    # the documented rule: ceil(train samples / (world size x expected batch size)), one pass over the data
    assert 40 / (WORLD * 4) <= expected <= math.ceil(40 / WORLD)
    for r in ranks:
        assert [len(p) for p in r["passes"]] == [expected] * EPOCHS
        assert r["gathered_counts"] == [[expected] * EPOCHS] * WORLD
    a, b = (r["passes"] for r in ranks)
    assert a[0] != a[1]  # fresh order each epoch
    assert a[0] != b[0]  # ranks read different data


def test_lightning_ddp_fit_sees_equal_train_batches_and_the_whole_val_split(ranks):
    expected = ranks[0]["expected_batches"]
    for r in ranks:
        assert [len(epoch) for epoch in r["trainer_train_ids"]] == [expected] * EPOCHS
        # the trainer's epoch reaches the stream: same seeded batches as the direct passes of epochs 0 and 1
        assert r["trainer_train_ids"] == r["passes"]
    for epoch in range(EPOCHS):
        union = [i for r in ranks for i in r["trainer_val_ids"][epoch]]
        assert sorted(union) == [f"val.{n:04d}" for n in range(13)]
