import json
import math
import os
import socket
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.multiprocessing as mp
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers.logger import Logger
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from ser_lightning.callbacks.curriculum import EntropyCurriculum
from ser_lightning.labels import normalized_entropy
from ser_lightning.losses import curriculum_loss

C = 4
# normalised label entropies of the 8 training clips, 2 batches of 4, none on a threshold
H_NORM = [0.1, 0.3, 0.45, 0.6, 0.7, 0.8, 0.9, 0.99]
# warm-up 1, ramp 3, 0.5 -> 0.95: epoch 0 off; 1: 0.5; 2: 0.725; 3, 4: 0.95
SCHEDULE = {"warmup_epochs": 1, "ramp_epochs": 3, "start_threshold": 0.5, "end_threshold": 0.95}
WANT_THRESHOLD = {0: 1.0, 1: 0.5, 2: 0.725, 3: 0.95, 4: 0.95}
# kept: all; h <= 0.5 -> 3 (the second batch keeps none and falls back, counted as 0); <= 0.725 -> 5; <= 0.95 -> 7
WANT_KEPT = {0: 1.0, 1: 3 / 8, 2: 5 / 8, 3: 7 / 8, 4: 7 / 8}


class _Memory(Logger):
    """Keeps every logged dict."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, float]] = []

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        self.rows.append({k: float(v) for k, v in metrics.items()})

    def per_epoch(self, key: str) -> dict[int, float]:
        return {int(r["epoch"]): r[key] for r in self.rows if key in r}


class _Toy(pl.LightningModule):
    """A linear classifier whose per-sample CE is weighted by the curriculum setting the callback hands it."""

    num_classes = C

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(2, C)
        self.curriculum = None
        self.seen: dict[int, object] = {}

    def training_step(self, batch, batch_idx):
        self.seen[self.current_epoch] = self.curriculum
        per_sample = F.cross_entropy(self.layer(batch["x"]), batch["y"], reduction="none")
        return curriculum_loss(per_sample, normalized_entropy(batch["entropy"], self.num_classes), self.curriculum)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 2, generator=g)
    entropy = torch.tensor(H_NORM, dtype=torch.float64) * math.log(C)
    rows = [{"x": x[i], "y": torch.tensor(i % C), "entropy": entropy[i]} for i in range(8)]
    return DataLoader(rows, batch_size=4, shuffle=False)


def _trainer(tmp_path, max_epochs, callback, logger) -> pl.Trainer:
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)
    return pl.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        logger=logger,
        callbacks=[callback, ckpt],
        limit_val_batches=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        default_root_dir=tmp_path,
    )


def test_fit_logs_the_schedule_and_a_resumed_run_continues_it(tmp_path):
    first, logger1 = _Toy(), _Memory()
    _trainer(tmp_path, 3, EntropyCurriculum(**SCHEDULE), logger1).fit(first, _loader())
    assert logger1.per_epoch("train/curriculum/threshold") == pytest.approx({e: WANT_THRESHOLD[e] for e in range(3)})
    assert logger1.per_epoch("train/curriculum/kept_fraction") == pytest.approx({e: WANT_KEPT[e] for e in range(3)})
    assert logger1.per_epoch("train/curriculum/active") == {0: 0.0, 1: 1.0, 2: 1.0}
    assert first.seen[0].active is False
    assert first.seen[2].threshold == pytest.approx(0.725)

    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["callbacks"]
    state = next(v for k, v in saved.items() if k.startswith("EntropyCurriculum"))
    assert state["epoch"] == 2
    assert state["counts"] == [5.0, 8.0, 0.0]

    resumed_cb, resumed, logger2 = EntropyCurriculum(**SCHEDULE), _Toy(), _Memory()
    trainer = _trainer(tmp_path, 5, resumed_cb, logger2)
    trainer.fit(resumed, _loader(), ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert sorted(resumed.seen) == [3, 4]  # the resumed run trains only the remaining epochs
    assert logger2.per_epoch("train/curriculum/threshold") == pytest.approx({3: 0.95, 4: 0.95})
    assert logger2.per_epoch("train/curriculum/kept_fraction") == pytest.approx({3: 7 / 8, 4: 7 / 8})
    assert resumed.seen[3].threshold == pytest.approx(0.95)
    assert resumed_cb.epoch == 4


def test_weight_mode_logs_alpha_and_the_fraction_at_the_minimum(tmp_path):
    logger = _Memory()
    callback = EntropyCurriculum(mode="weight", warmup_epochs=1, ramp_epochs=2, alpha_start=2.0, min_weight=0.15)
    _trainer(tmp_path, 3, callback, logger).fit(_Toy(), _loader())
    assert logger.per_epoch("train/curriculum/alpha") == pytest.approx({0: 0.0, 1: 2.0, 2: 0.0})
    assert logger.per_epoch("train/curriculum/kept_fraction") == pytest.approx({0: 1.0, 1: 1.0, 2: 1.0})
    # α = 2: (1 - h)^2 <= 0.15 for h >= 1 - sqrt(0.15) = 0.613: 0.7, 0.8, 0.9, 0.99 (0.6 gives 0.16)
    assert logger.per_epoch("train/curriculum/at_min_weight_fraction") == pytest.approx({0: 0.0, 1: 4 / 8, 2: 0.0})


def test_state_dict_round_trip_and_schedule_mismatch_warning():
    callback = EntropyCurriculum(**SCHEDULE)
    callback.epoch = 3
    callback._counts = torch.tensor([2.0, 4.0, 0.0], dtype=torch.float64)
    state = callback.state_dict()
    assert state == {
        "schedule": {"mode": "filter", **SCHEDULE, "alpha_start": 2.0, "alpha_end": 0.0, "min_weight": 0.15},
        "epoch": 3,
        "counts": [2.0, 4.0, 0.0],
    }
    restored = EntropyCurriculum(**SCHEDULE)
    restored.load_state_dict(state)
    assert restored.state_dict() == state
    with pytest.warns(UserWarning, match="schedule"):
        EntropyCurriculum(**{**SCHEDULE, "warmup_epochs": 2}).load_state_dict(state)


def _ddp_worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2", "RANK": str(rank)}
    os.environ.update(env, LOCAL_RANK=str(rank), NODE_RANK="0")
    logger = _Memory()
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        logger=logger,
        callbacks=[EntropyCurriculum(**SCHEDULE)],
        enable_checkpointing=False,
        limit_val_batches=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )
    trainer.fit(_Toy(), _loader())  # DistributedSampler: rank 0 gets clips 0, 2, 4, 6; rank 1 clips 1, 3, 5, 7
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(logger.per_epoch("train/curriculum/kept_fraction")))


@pytest.mark.slow  # ~30 s of CPU for two spawned Lightning processes: run with -m slow
@pytest.mark.integration
@pytest.mark.timeout(300)
def test_kept_fraction_is_summed_over_two_gloo_ranks(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_ddp_worker, args=(port, str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    for rank in range(2):
        kept = {int(k): v for k, v in json.loads((tmp_path / f"rank{rank}.json").read_text()).items()}
        # epoch 1 (threshold 0.5): rank 0 keeps 0.1, 0.45 of 4, rank 1 keeps 0.3 of 4: both log 3 / 8
        assert kept == pytest.approx({0: 1.0, 1: 3 / 8})
