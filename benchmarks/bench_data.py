"""Training-loader throughput: ``SERDataModule`` against a plain PyTorch ``Dataset`` + ``DataLoader``, in one run.

Both loaders read the same train shards (WebDataset tars of 16 kHz FLAC + JSON):

* **ours**: ``SERDataModule.train_dataloader()``: tar streaming, shuffle buffer, FLAC decoding, length-bucketed
  dynamic batches bounded by ``--max-batch-seconds`` / ``--max-batch-size``, and the project's ``Collate``.
* **plain**: a map-style ``Dataset`` indexing the tars with ``tarfile`` and decoding each clip with
  ``soundfile``, a ``DataLoader`` with ``shuffle=True``, a fixed batch size (by default the mean batch size the
  DataModule reaches, so both deliver about as many clips per batch) and a zero-pad collate.

Same ``num_workers`` and ``pin_memory`` for both. Each repeat starts fresh workers, drops ``--warmup`` batches
(worker start-up, shuffle and bucket buffers filling) and times the next ``--batches``; the repeats of the two
loaders alternate, so machine noise hits both, and the median over ``--repeats`` is reported.

Reported per loader: clips/s and audio-seconds/s (valid audio, not padding) over the timed batches; padding
fraction (padded samples / all samples of the ``audio`` tensors); time to the first batch of a fresh iterator.
The ratio is ours / plain. Nothing is fed to a model: this is the loader alone.

Example::

    python benchmarks/bench_data.py --shards shards/demo --workers 2 --batches 100 --repeats 5
    python benchmarks/bench_data.py --json
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import statistics
import tarfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from machine import machine
from torch.utils.data import DataLoader, Dataset, RandomSampler

from ser_lightning.data.shards.card import read_card, read_durations, shard_paths
from ser_lightning.data.stream.batching import expected_batch_size
from ser_lightning.data.stream.datamodule import SERDataModule

# --------------------------------------------------------------------------------------------
# The plain baseline
# --------------------------------------------------------------------------------------------


class PlainTarDataset(Dataset):
    """Map-style dataset over WebDataset tars: ``tarfile`` index at start-up, ``soundfile`` decoding per item.

    Args:
        shards: tar paths.
        label_source: which ``distribution`` of the JSON is the target.
    """

    def __init__(self, shards: Sequence[str], label_source: str = "primary") -> None:
        self.label_source = label_source
        self.items: list[tuple[str, tarfile.TarInfo, tarfile.TarInfo]] = []
        for path in shards:
            members: dict[str, dict[str, tarfile.TarInfo]] = {}
            with tarfile.open(path) as tar:
                for member in tar:
                    if member.isfile() and "." in member.name:
                        key, ext = member.name.split(".", 1)
                        members.setdefault(key, {})[ext] = member
            self.items += [(path, m["flac"], m["json"]) for m in members.values() if "flac" in m and "json" in m]
        self._tars: dict[str, tarfile.TarFile] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.items)

    def _tar(self, path: str) -> tarfile.TarFile:
        if self._pid != os.getpid():  # a forked worker: open its own file handles
            self._tars, self._pid = {}, os.getpid()
        if path not in self._tars:
            self._tars[path] = tarfile.open(path)
        return self._tars[path]

    def __getitem__(self, index: int) -> dict[str, Any]:
        path, flac_info, json_info = self.items[index]
        tar = self._tar(path)
        meta = json.loads(tar.extractfile(json_info).read())
        audio, _ = sf.read(io.BytesIO(tar.extractfile(flac_info).read()), dtype="float32")
        if audio.ndim > 1:
            audio = audio.mean(axis=1)
        target = np.asarray(meta["distribution"][self.label_source], dtype=np.float32)
        return {"audio": audio, "target": target / target.sum(), "transcript": meta.get("transcript") or ""}


class PadCollate:
    """Zero-pad clips to the longest of the batch; ``audio``, ``audio_mask``, ``targets`` (+ tokens).

    Args:
        tokenizer: optional Hugging Face tokenizer applied to the transcripts, as the DataModule does.
        max_text_length: truncation length of the tokens.
    """

    def __init__(self, tokenizer: Any | None = None, max_text_length: int = 64) -> None:
        self.tokenizer = tokenizer
        self.max_text_length = max_text_length

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Collate a list of dataset items into padded tensors."""
        lengths = [len(item["audio"]) for item in items]
        audio = torch.zeros(len(items), max(lengths))
        mask = torch.zeros(len(items), max(lengths), dtype=torch.long)
        for row, (item, n) in enumerate(zip(items, lengths, strict=True)):
            audio[row, :n] = torch.from_numpy(item["audio"])
            mask[row, :n] = 1
        targets = torch.from_numpy(np.stack([item["target"] for item in items]))
        batch = {"audio": audio, "audio_mask": mask, "targets": targets}
        if self.tokenizer is not None:
            tokens = self.tokenizer(
                [i["transcript"] for i in items],
                padding=True,
                truncation=True,
                max_length=self.max_text_length,
                return_tensors="pt",
            )
            batch["text_input_ids"] = tokens["input_ids"]
            batch["text_attention_mask"] = tokens["attention_mask"]
        return batch


def plain_loader(
    dataset: PlainTarDataset, batch_size: int, num_batches: int, workers: int, collate: PadCollate, seed: int
) -> DataLoader:
    """A shuffled ``DataLoader`` yielding ``num_batches`` batches (several passes over the dataset if needed)."""
    sampler = RandomSampler(
        dataset, num_samples=num_batches * batch_size, generator=torch.Generator().manual_seed(seed)
    )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=torch.cuda.is_available(),
    )


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def time_loader(batches: Iterator[dict[str, Any]], warmup: int, timed: int, sample_rate: int) -> dict[str, float]:
    """Drain ``warmup`` batches untimed, then time ``timed`` batches; clips, audio seconds and padding.

    Args:
        batches: a fresh iterator over the loader (its workers start on the first ``next``).
        warmup: batches dropped before timing.
        timed: batches timed.
        sample_rate: rate of the ``audio`` tensors.

    Returns:
        ``first_batch_s``, ``seconds``, ``clips``, ``clips_per_s``, ``audio_s_per_s``, ``padding`` of the timed part.
    """
    start = time.perf_counter()
    next(batches)
    first = time.perf_counter() - start
    for _ in range(warmup - 1):
        next(batches)
    clips = valid = total = 0
    start = time.perf_counter()
    for _ in range(timed):
        mask = next(batches)["audio_mask"]
        clips += mask.shape[0]
        valid += int(mask.sum())
        total += mask.numel()
    seconds = time.perf_counter() - start
    audio_seconds = valid / sample_rate
    return {
        "first_batch_s": first,
        "seconds": seconds,
        "clips": clips,
        "clips_per_s": clips / seconds,
        "audio_s_per_s": audio_seconds / seconds,
        "padding": 1.0 - valid / total,
    }


def summarise(runs: list[dict[str, float]]) -> dict[str, Any]:
    """Median of every measure over the repeats, plus the raw repeats."""
    keys = ("first_batch_s", "clips_per_s", "audio_s_per_s", "padding", "clips_per_batch")
    return {**{k: statistics.median(r[k] for r in runs) for k in keys}, "repeats": runs}


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", default="shards/demo", help="shard directory with card.json")
    parser.add_argument("--split", default="train")
    parser.add_argument("--label-source", default="primary")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of both loaders")
    parser.add_argument("--batches", type=int, default=100, help="timed batches per repeat")
    parser.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="untimed batches per repeat (default: one bucket buffer per worker, so the bucketing is in steady state)",
    )
    parser.add_argument("--repeats", type=int, default=5, help="repeats per loader (median reported)")
    parser.add_argument("--max-batch-seconds", type=float, default=64.0)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--bucket-buffer", type=int, default=256)
    parser.add_argument(
        "--plain-batch-size", type=int, default=None, help="default: the DataModule's expected mean batch size"
    )
    parser.add_argument(
        "--tokenizer", default=None, help="tokenize transcripts in both loaders ('minilm', hub id or path)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the Markdown table")
    args = parser.parse_args(argv)
    for name in ("batches", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.workers < 0:
        parser.error("--workers must be >= 0")
    if args.warmup is not None and args.warmup < 1:
        parser.error("--warmup must be >= 1 (the first batch is always untimed)")
    return args


def load_tokenizer(name: str | None) -> Any | None:
    """The tokenizer for ``--tokenizer``, or ``None``."""
    if name is None:
        return None
    from transformers import AutoTokenizer

    from ser_lightning.nn.text import MINILM, minilm_path

    return AutoTokenizer.from_pretrained(str(minilm_path()) if name == MINILM else name)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure both loaders; return settings, machine, per-loader medians and the ratios."""
    tokenizer = load_tokenizer(args.tokenizer)
    card = read_card(args.shards, args.label_source)
    shards = [str(p) for p in shard_paths(args.shards, args.split, card)]
    sample_rate = int(card["sample_rate"])
    durations = read_durations(shards[0], 512)
    expected = expected_batch_size(durations, args.max_batch_seconds, args.max_batch_size)
    plain_batch_size = args.plain_batch_size or max(1, round(expected))
    workers = max(1, args.workers)
    warmup = args.warmup or math.ceil(workers * args.bucket_buffer / expected) + workers
    total = warmup + args.batches

    def ours() -> Iterator[dict[str, Any]]:
        dm = SERDataModule(
            args.shards,
            label_source=args.label_source,
            sample_rate=sample_rate,
            max_batch_seconds=args.max_batch_seconds,
            max_batch_size=args.max_batch_size,
            train_batches_per_epoch=total,
            num_workers=args.workers,
            bucket_buffer=args.bucket_buffer,
            seed=args.seed,
        )
        dm.connect(tokenizer=tokenizer)
        dm.setup("fit")
        return iter(dm.train_dataloader())

    dataset = PlainTarDataset(shards, args.label_source)
    collate = PadCollate(tokenizer)

    def plain(repeat: int) -> Iterator[dict[str, Any]]:
        return iter(plain_loader(dataset, plain_batch_size, total, args.workers, collate, args.seed + repeat))

    # one short untimed pass of each: page cache, imports in the workers
    time_loader(ours(), 1, 1, sample_rate)
    time_loader(plain(-1), 1, 1, sample_rate)
    results: dict[str, list[dict[str, float]]] = {"ours": [], "plain": []}
    for repeat in range(args.repeats):
        for name, make in (("ours", ours), ("plain", lambda r=repeat: plain(r))):
            run_ = time_loader(make(), warmup, args.batches, sample_rate)
            run_["clips_per_batch"] = run_["clips"] / args.batches
            results[name].append(run_)
    summary = {name: summarise(runs) for name, runs in results.items()}
    return {
        "benchmark": "data",
        "settings": {
            "shards": str(Path(args.shards)),
            "split": args.split,
            "workers": args.workers,
            "batches": args.batches,
            "warmup": warmup,
            "repeats": args.repeats,
            "max_batch_seconds": args.max_batch_seconds,
            "max_batch_size": args.max_batch_size,
            "bucket_buffer": args.bucket_buffer,
            "plain_batch_size": plain_batch_size,
            "expected_batch_size": expected,
            "tokenizer": args.tokenizer,
        },
        "machine": machine(),
        **summary,
        "ratio_clips_per_s": summary["ours"]["clips_per_s"] / summary["plain"]["clips_per_s"],
        "ratio_audio_s_per_s": summary["ours"]["audio_s_per_s"] / summary["plain"]["audio_s_per_s"],
    }


HEADER = (
    "| workers | batches x repeats | ours clips/s | plain clips/s | ratio | ours audio s/s | plain audio s/s "
    "| ours padding | plain padding | clips/batch ours / plain | first batch s ours / plain |"
)


def markdown(result: dict[str, Any]) -> str:
    """Header, separator and the one result row of the Markdown table."""
    s, ours, plain = result["settings"], result["ours"], result["plain"]
    row = (
        f"| {s['workers']} | {s['batches']} x {s['repeats']} | {ours['clips_per_s']:.0f} | {plain['clips_per_s']:.0f} "
        f"| {result['ratio_clips_per_s']:.2f} | {ours['audio_s_per_s']:.0f} | {plain['audio_s_per_s']:.0f} "
        f"| {ours['padding']:.1%} | {plain['padding']:.1%} "
        f"| {ours['clips_per_batch']:.1f} / {plain['clips_per_batch']:.1f} "
        f"| {ours['first_batch_s']:.2f} / {plain['first_batch_s']:.2f} |"
    )
    separator = "|" + "---|" * (HEADER.count("|") - 1)
    return "\n".join([HEADER, separator, row])


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark and print a Markdown table (or JSON with ``--json``)."""
    args = parse_args(argv)
    result = run(args)
    print(json.dumps(result, indent=2) if args.json else markdown(result))


if __name__ == "__main__":
    main()
