"""Training steps/s of the demo AmbER² model: Lightning ``Trainer.fit`` against a plain PyTorch loop, in one run.

Data loading is excluded: ``--distinct-batches`` real batches are collated once from the demo shards with
``SERDataModule`` (the config's ``data`` section, tokenizer connected from the model, ``num_workers=0``) and
kept in memory on the CPU; both loops cycle through the same list of ``--warmup + --steps`` batches, each
through a ``DataLoader(batch_size=None)``, and move them to the device every step.

* **lightning**: ``Trainer(max_steps=warmup + steps, accelerator=--device, precision=--precision)`` fitting the
  ``AmbER2`` LightningModule (``training_step``: ``training_loss`` + ``self.log``), no logger, checkpointing,
  progress bar, model summary or validation.
* **plain**: ``model.train()``; per batch ``loss = model.training_loss(batch)["loss"]`` (under
  ``torch.autocast`` for ``bf16-mixed``), ``zero_grad``, ``backward``, ``optimizer.step()``, with the optimizer
  of ``model.configure_optimizers()`` (AdamW).

Both start from the same weights (one model built from ``--config``, deep-copied per run) and the same seed.
The first ``--warmup`` steps are untimed (``torch.compile``, allocator and cuDNN warm-up; by default one pass
over the distinct batch shapes); the next ``--steps`` are timed, with a CUDA synchronise at both ends. Repeats
alternate which loop goes first; medians are reported. The ratio is lightning / plain steps/s (1.0: no
overhead), and ``overhead_ms`` is the extra time per step.

``--compile`` compiles the plain loop's ``model.training_loss`` with ``torch.compile`` and fits
``torch.compile(module)`` with Lightning (which compiles ``training_step``); a failure is reported with its
error class instead of numbers. ``--device cuda`` without CUDA prints a skipped result and exits 0.

Example::

    python benchmarks/bench_train.py --device cpu --precision 32 --steps 50 --repeats 3
    python benchmarks/bench_train.py --device cuda --precision bf16-mixed --compile --json
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import logging
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import Callback
from machine import machine
from torch.utils.data import DataLoader

from ser_lightning.data.stream.datamodule import SERDataModule
from ser_lightning.types import LINKED_FACTS

# --------------------------------------------------------------------------------------------
# Model and batches from the config
# --------------------------------------------------------------------------------------------


def instantiate(spec: Any) -> Any:
    """Build ``{"class_path": ..., "init_args": {...}}`` specs recursively (as LightningCLI does)."""
    if isinstance(spec, dict) and "class_path" in spec:
        module, _, name = spec["class_path"].rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        return cls(**{k: instantiate(v) for k, v in (spec.get("init_args") or {}).items()})
    if isinstance(spec, dict):
        return {k: instantiate(v) for k, v in spec.items()}
    if isinstance(spec, list):
        return [instantiate(v) for v in spec]
    return spec


def build(config_path: str, shards: str | None, distinct: int, seed: int) -> tuple[L.LightningModule, list[dict]]:
    """The config's model (with the data facts linked in) and ``distinct`` collated training batches.

    Args:
        config_path: a LightningCLI YAML with ``model`` and ``data`` sections (``configs/demo.yaml``).
        shards: shard directory overriding ``data.shards``.
        distinct: number of batches to collate.
        seed: seed of the weights and of the batch order.
    """
    config = yaml.safe_load(Path(config_path).read_text(encoding="utf-8"))
    data_args = dict(config.get("data") or {})
    if shards is not None:
        data_args["shards"] = shards
    data_args.update(num_workers=0, train_batches_per_epoch=distinct, seed=seed)
    dm = SERDataModule(**data_args)
    model_spec = copy.deepcopy(config["model"])
    model_spec.setdefault("init_args", {}).update({name: getattr(dm, name) for name in LINKED_FACTS})
    L.seed_everything(seed, verbose=False)
    model = instantiate(model_spec)
    dm.connect(**model.data_requirements())
    dm.setup("fit")
    return model, list(dm.train_dataloader())


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Tensors of a batch dict moved to ``device`` (other values untouched), as Lightning's transfer does."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA only)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------------------------
# The two loops
# --------------------------------------------------------------------------------------------


def plain_loop(
    model: L.LightningModule,
    batches: list[dict[str, Any]],
    warmup: int,
    device: torch.device,
    precision: str,
    compile_: bool,
    seed: int,
) -> dict[str, float]:
    """Plain PyTorch training over ``batches``; the steps after ``warmup`` are timed."""
    L.seed_everything(seed, verbose=False)
    model.to(device).train()
    optimizer = model.configure_optimizers()
    loss_fn: Callable[[dict[str, Any]], dict[str, torch.Tensor]] = model.training_loss
    if compile_:
        loss_fn = torch.compile(loss_fn)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16-mixed" else nullcontext()
    start = time.perf_counter()
    loss = torch.zeros(())
    for step, batch in enumerate(DataLoader(batches, batch_size=None)):
        if step == warmup:
            synchronize(device)
            start = time.perf_counter()
        batch = to_device(batch, device)
        with autocast:
            loss = loss_fn(batch)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    synchronize(device)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "steps_per_s": (len(batches) - warmup) / seconds, "final_loss": float(loss)}


class StepTimer(Callback):
    """Times the steps after the first ``warmup`` ones and keeps the last loss.

    Args:
        warmup: untimed steps.
        last: index of the last step.
    """

    def __init__(self, warmup: int, last: int) -> None:
        self.warmup, self.last = warmup, last
        self.start = self.end = 0.0
        self.final_loss = float("nan")

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Start the clock after the last warm-up step, stop it after the last step."""
        if batch_idx == self.warmup - 1:
            synchronize(pl_module.device)
            self.start = time.perf_counter()
        elif batch_idx == self.last:
            synchronize(pl_module.device)
            self.end = time.perf_counter()
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            self.final_loss = float(loss)


def lightning_loop(
    model: L.LightningModule,
    batches: list[dict[str, Any]],
    warmup: int,
    device: torch.device,
    precision: str,
    compile_: bool,
    seed: int,
) -> dict[str, float]:
    """``Trainer.fit`` over ``batches``; the steps after ``warmup`` are timed by a callback."""
    L.seed_everything(seed, verbose=False)
    timer = StepTimer(warmup, len(batches) - 1)
    trainer = L.Trainer(
        accelerator=device.type,
        devices=1,
        precision=precision,
        max_steps=len(batches),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[timer],
    )
    fit_start = time.perf_counter()
    trainer.fit(torch.compile(model) if compile_ else model, train_dataloaders=DataLoader(batches, batch_size=None))
    seconds = timer.end - timer.start
    return {
        "seconds": seconds,
        "steps_per_s": (len(batches) - warmup) / seconds,
        "final_loss": timer.final_loss,
        "fit_wall_s": time.perf_counter() - fit_start,
    }


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/demo.yaml", help="LightningCLI YAML with model and data")
    parser.add_argument("--shards", default=None, help="override the config's data.shards")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per run (default: --distinct-batches)")
    parser.add_argument("--distinct-batches", type=int, default=8, help="real batches collated and cycled")
    parser.add_argument("--repeats", type=int, default=3, help="runs per loop (median reported)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--precision", choices=("32", "bf16-mixed"), default="32")
    parser.add_argument("--compile", action="store_true", help="torch.compile both loops")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the Markdown table")
    args = parser.parse_args(argv)
    for name in ("steps", "distinct_batches", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup is None:
        args.warmup = args.distinct_batches
    if args.warmup < 1:
        parser.error("--warmup must be >= 1")
    return args


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """The run's settings, as reported."""
    keys = ("config", "steps", "warmup", "distinct_batches", "repeats", "device", "precision", "compile", "seed")
    return {k: getattr(args, k) for k in keys}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure both loops; return settings, machine, per-loop medians and the ratio (or the failures)."""
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        return {"benchmark": "train", "settings": settings(args), "skipped": "CUDA is not available"}
    pristine, distinct = build(args.config, args.shards, args.distinct_batches, args.seed)
    count = args.warmup + args.steps
    batches = [distinct[i % len(distinct)] for i in range(count)]
    loops = {"plain": plain_loop, "lightning": lightning_loop}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in loops}
    errors: dict[str, str] = {}
    for repeat in range(args.repeats):
        order = list(loops) if repeat % 2 == 0 else list(reversed(loops))
        for name in order:
            if name in errors:
                continue
            try:
                result = loops[name](
                    copy.deepcopy(pristine), batches, args.warmup, device, args.precision, args.compile, args.seed
                )
            except Exception as exn:  # a failing torch.compile must be reported, not crash the benchmark
                if not args.compile:
                    raise
                errors[name] = f"{type(exn).__name__}: {str(exn).splitlines()[0] if str(exn) else ''}"[:300]
                torch._dynamo.reset()
                continue
            runs[name].append(result)
    result: dict[str, Any] = {
        "benchmark": "train",
        "settings": settings(args),
        "machine": machine(device),
        "batch_shapes": [list(b["audio"].shape) + [b["text_input_ids"].shape[1]] for b in distinct],
    }
    for name, values in runs.items():
        if values:
            keys = [k for k in values[0] if isinstance(values[0][k], float)]
            result[name] = {**{k: statistics.median(v[k] for v in values) for k in keys}, "repeats": values}
        else:
            result[name] = {"error": errors.get(name, "no run")}
    if "steps_per_s" in result["plain"] and "steps_per_s" in result["lightning"]:
        plain, lightning = result["plain"]["steps_per_s"], result["lightning"]["steps_per_s"]
        result["ratio"] = lightning / plain
        result["overhead_ms"] = 1e3 * (1 / lightning - 1 / plain)
    return result


HEADER = (
    "| device | precision | compile | steps x repeats | plain steps/s | lightning steps/s | ratio | overhead ms/step "
    "| final loss plain / lightning |"
)


def markdown(result: dict[str, Any]) -> str:
    """Header, separator and the one result row of the Markdown table."""
    s = result["settings"]
    head = f"| {s['device']} | {s['precision']} | {'yes' if s['compile'] else 'no'} | {s['steps']} x {s['repeats']} "
    if "skipped" in result:
        row = head + f"| skipped: {result['skipped']} | | | | |"
    else:
        plain, lightning = result["plain"], result["lightning"]

        def rate(r: dict[str, Any]) -> str:
            return f"{r['steps_per_s']:.2f}" if "steps_per_s" in r else f"failed ({r['error'].split(':')[0]})"

        def loss(r: dict[str, Any]) -> str:
            return f"{r['final_loss']:.4f}" if "final_loss" in r else "-"

        ratio = f"{result['ratio']:.3f}" if "ratio" in result else "-"
        overhead = f"{result['overhead_ms']:.1f}" if "overhead_ms" in result else "-"
        row = head + f"| {rate(plain)} | {rate(lightning)} | {ratio} | {overhead} | {loss(plain)} / {loss(lightning)} |"
    separator = "|" + "---|" * (HEADER.count("|") - 1)
    return "\n".join([HEADER, separator, row])


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark and print a Markdown table (or JSON with ``--json``)."""
    args = parse_args(argv)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*(num_workers|log_every_n_steps|does not have many workers).*")
    result = run(args)
    print(json.dumps(result, indent=2) if args.json else markdown(result))


if __name__ == "__main__":
    main()
