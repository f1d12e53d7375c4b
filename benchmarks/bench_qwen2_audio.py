"""Qwen2-Audio LoRA distribution model: utterances/s and peak memory of the authors' path against this module's.

One process, one model (``Qwen2AudioDistribution`` with LoRA and the distribution head), synthetic batches of
``--seconds`` of audio with a short transcript through the authors' prompt (``Qwen2AudioFeatures``, computed once,
outside the timing). Training rows time forward + backward + AdamW step (``bf16-mixed`` autocast on CUDA):

* **(a) authors**: the full ``Qwen2AudioForConditionalGeneration`` forward with ``output_hidden_states=True``
  (vocabulary logits included, 30 s padded encoder), last hidden state -> the same head -> the same loss, as
  ``model_finetuning/train.py`` of ``WendaZhang08/scaling-ambiguity-SER`` does;
* **(b) module**: ``model.training_loss`` (trimmed encoder, no ``lm_head``), no encoder cache;
* **(c) module + cache**: the same with the on-disk encoder cache, warmed by one untimed pass;
* **(d) QLoRA 4-bit**: (b) on a 4-bit base (bitsandbytes, CUDA only; skipped with the reason otherwise).

Evaluation rows time ``torch.no_grad`` predictions: the authors' per-utterance path at batch 1, and this
module's at batch 1 and ``--eval-batch``, with the trimmed and the padded encoder. Peak memory is
``torch.cuda.max_memory_allocated`` per row on CUDA, the process's peak RSS on the CPU.

``--random-init`` builds ``Qwen2AudioConfig()`` (its defaults: 32 + 32 layers, hidden 4096, intermediate 22016)
directly on the GPU in bf16, no download; ``--tiny`` is the CPU smoke run of the test suite.

Example::

    python benchmarks/bench_qwen2_audio.py --random-init --batch 8 --eval-batch 32
    python benchmarks/bench_qwen2_audio.py --tiny --steps 2
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
from machine import machine

from ser_lightning.models import Qwen2AudioDistribution
from ser_lightning.nn.qwen2_audio import qwen2_audio_hidden_states
from ser_lightning.nn.qwen2_audio.offline import TINY_QWEN2_AUDIO_CONFIG

CLASSES = ["Anger", "Happiness", "Neutral", "Sadness"]
TRANSCRIPT = "i am so happy today leave me alone"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group(required=True)
    size.add_argument("--random-init", action="store_true", help="7B architecture, random weights, on the GPU")
    size.add_argument("--tiny", action="store_true", help="tiny random model on the CPU (smoke run)")
    size.add_argument("--backbone", help="hub id or local directory of real weights")
    parser.add_argument("--batch", type=int, default=8, help="training batch size")
    parser.add_argument("--eval-batch", type=int, default=32, help="batched evaluation size")
    parser.add_argument("--seconds", type=float, default=4.0, help="audio per utterance")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per row")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per row")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the Markdown table")
    args = parser.parse_args(argv)
    if min(args.batch, args.eval_batch, args.steps) < 1 or args.warmup < 0:
        parser.error("--batch, --eval-batch and --steps must be >= 1, --warmup >= 0")
    return args


def model_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """``Qwen2AudioDistribution`` arguments for the chosen size."""
    common = {"num_classes": len(CLASSES), "classes": CLASSES, "gradient_checkpointing": args.gradient_checkpointing}
    if args.tiny:
        return {**common, "backbone": None, "random_config": TINY_QWEN2_AUDIO_CONFIG, "dtype": "float32"}
    if args.random_init:
        return {**common, "backbone": None, "random_config": {}, "dtype": "bfloat16"}
    return {**common, "backbone": args.backbone, "dtype": "bfloat16"}


def make_batch(model: Qwen2AudioDistribution, size: int, seconds: float, offset: int = 0) -> dict[str, Any]:
    """A collated batch of ``size`` noisy tones with processor inputs, as the DataModule delivers it."""
    rng = np.random.default_rng(offset)
    n = int(seconds * 16000)
    t = np.arange(n) / 16000
    audio = torch.stack([torch.from_numpy((0.3 * np.sin(2 * np.pi * (200 + 40 * i) * t)
                                           + 0.05 * rng.standard_normal(n)).astype(np.float32)) for i in range(size)])
    votes = rng.integers(0, 4, (size, len(CLASSES))) + 0.5
    batch = {
        "audio": audio,
        "audio_mask": torch.ones_like(audio, dtype=torch.long),
        "transcripts": [TRANSCRIPT] * size,
        "ids": [f"utt{offset + i}" for i in range(size)],
        "targets": torch.from_numpy(votes / votes.sum(-1, keepdims=True)).float(),
    }
    batch.update(model.feature_transform()(batch))
    return batch


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Tensors moved to ``device``."""
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def authors_logits(model: Qwen2AudioDistribution, batch: dict[str, Any]) -> torch.Tensor:
    """The authors' path: full model forward (padded encoder, lm_head), last hidden state into the head."""
    out = model.backbone(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        input_features=batch["input_features"],
        feature_attention_mask=batch["feature_attention_mask"],
        output_hidden_states=True,
    )
    return model.head(out.hidden_states[-1], batch["attention_mask"]).float()


def module_logits(model: Qwen2AudioDistribution, batch: dict[str, Any], trim: bool = True) -> torch.Tensor:
    """This module's path (trimmed or padded encoder, cache as configured, no lm_head)."""
    hidden = qwen2_audio_hidden_states(
        model.backbone, batch["input_ids"], batch["attention_mask"], batch["input_features"],
        batch["feature_attention_mask"], ids=batch["ids"], cache=model.encoder_cache, trim=trim,
    )
    return model.head(hidden, batch["attention_mask"]).float()


def peak_memory(device: torch.device) -> str:
    """Peak memory since the last reset (CUDA) or the process's peak RSS (CPU), in GiB."""
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB RSS (process)"


def timed(fn: Callable[[dict[str, Any]], Any], batches: list[dict[str, Any]], warmup: int, device) -> dict[str, Any]:
    """Run ``fn`` over ``batches``; utterances/s over the steps after ``warmup``, and peak memory."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for step, batch in enumerate(batches):
        if step == warmup:
            sync(device)
            start = time.perf_counter()
        fn(batch)
    sync(device)
    utterances = sum(len(b["ids"]) for b in batches[warmup:])
    return {"utt_per_s": utterances / (time.perf_counter() - start), "peak_memory": peak_memory(device)}


def train_step(model: Qwen2AudioDistribution, logits_fn: Callable, device: torch.device) -> Callable:
    """One forward + backward + AdamW step through ``logits_fn``."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2.5e-6)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    model.train()

    def step(batch: dict[str, Any]) -> None:
        with autocast:
            loss = model.loss(logits_fn(model, batch), batch["targets"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def eval_step(model: Qwen2AudioDistribution, logits_fn: Callable, device: torch.device) -> Callable:
    """One no-grad prediction through ``logits_fn``."""
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    model.eval()

    def step(batch: dict[str, Any]) -> None:
        with torch.no_grad(), autocast:
            logits_fn(model, batch).softmax(-1)

    return step


def build(args: argparse.Namespace, device: torch.device, **extra: Any) -> Qwen2AudioDistribution:
    """The model on ``device``, seeded."""
    torch.manual_seed(0)
    model = Qwen2AudioDistribution(**{**model_kwargs(args), **extra})
    model.build(device)
    return model


def qlora_row(args: argparse.Namespace, device: torch.device, count: int) -> dict:
    """(d): the module's training path on a 4-bit base, or the reason it cannot run here."""
    import importlib.util

    if device.type != "cuda":
        return {"skipped": "QLoRA needs CUDA"}
    if importlib.util.find_spec("bitsandbytes") is None:
        return {"skipped": "bitsandbytes is not installed (pip install 'ser-lightning[qlora]')"}
    with tempfile.TemporaryDirectory() as tmp:
        backbone = args.backbone
        if backbone is None:  # random weights: save them so that from_pretrained can quantise them
            source = build(args, device)
            source.backbone.get_base_model().save_pretrained(tmp)
            source.processor.save_pretrained(tmp)
            del source
            backbone = tmp
        torch.cuda.empty_cache()
        q = Qwen2AudioDistribution(**{**model_kwargs(args), "backbone": backbone, "quantization": "4bit"})
        q.build(device)
        batches = [to_device(make_batch(q, args.batch, args.seconds, i * args.batch), device) for i in range(count)]
        return timed(train_step(q, module_logits, device), batches, args.warmup, device)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """All rows: training (a)-(d), then evaluation."""
    device = torch.device("cpu" if args.tiny else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        return {"benchmark": "qwen2_audio", "skipped": "CUDA is not available (use --tiny on the CPU)"}
    count = args.warmup + args.steps
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as cache_dir:
        model = build(args, device, encoder_cache_dir=cache_dir)
        cache = model.encoder_cache
        state = model.state_dict()
        pristine = {k: v.detach().clone() for k, v in state.items() if "lora_" in k or k.startswith("head")}
        train = [to_device(make_batch(model, args.batch, args.seconds, i * args.batch), device) for i in range(count)]

        def train_row(name: str, fn: Callable, use_cache: bool) -> None:
            model.load_state_dict(copy.deepcopy(pristine), strict=False)
            model.encoder_cache = cache if use_cache else None
            if use_cache:  # warm the cache: one untimed pass computes and stores every utterance's encoder output
                with torch.no_grad():
                    for batch in train:
                        module_logits(model, batch)
            rows.append({"row": name, "mode": "train", "batch": args.batch, **timed(train_step(model, fn, device),
                                                                                      train, args.warmup, device)})

        train_row("(a) authors: full forward, padded encoder, lm_head", authors_logits, False)
        train_row("(b) module: trimmed encoder, no lm_head", module_logits, False)
        train_row("(c) module + encoder cache", module_logits, True)
        model.encoder_cache = None
        single = [to_device(make_batch(model, 1, args.seconds, 10_000 + i), device) for i in range(count)]
        batched = [to_device(make_batch(model, args.eval_batch, args.seconds, 20_000 + i * args.eval_batch), device)
                   for i in range(count)]
        for name, fn, batches in (
            ("authors: full forward, padded encoder", authors_logits, single),
            ("module: padded encoder", lambda m, b: module_logits(m, b, trim=False), single),
            ("module: trimmed encoder", module_logits, single),
            ("module: padded encoder", lambda m, b: module_logits(m, b, trim=False), batched),
            ("module: trimmed encoder", module_logits, batched),
        ):
            rows.append({"row": name, "mode": "eval", "batch": len(batches[0]["ids"]),
                         **timed(eval_step(model, fn, device), batches, args.warmup, device)})
        model.backbone = model.head = None  # free the device before the QLoRA row
        for batches in (train, single, batched):
            batches.clear()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    qlora = qlora_row(args, device, count)
    rows.insert(3, {"row": "(d) QLoRA 4-bit, module path", "mode": "train", "batch": args.batch, **qlora})
    settings = {k: getattr(args, k) for k in ("tiny", "random_init", "backbone", "batch", "eval_batch", "seconds",
                                             "steps", "warmup", "gradient_checkpointing")}
    return {"benchmark": "qwen2_audio", "settings": settings, "machine": machine(device), "rows": rows}


def markdown(result: dict[str, Any]) -> str:
    """One Markdown table: rows with utterances/s, speed-up against the authors' row of the same mode, memory."""
    if "skipped" in result:
        return f"skipped: {result['skipped']}"
    header = "| path | mode | batch | utt/s | x authors | peak memory |\n|---|---|---|---|---|---|"
    base = {r["mode"]: r["utt_per_s"] for r in result["rows"] if r["row"].startswith(("(a)", "authors"))}
    lines = [header]
    for r in result["rows"]:
        if "skipped" in r:
            lines.append(f"| {r['row']} | {r['mode']} | {r['batch']} | skipped: {r['skipped']} | | |")
            continue
        ratio = r["utt_per_s"] / base[r["mode"]] if r["mode"] in base else float("nan")
        lines.append(f"| {r['row']} | {r['mode']} | {r['batch']} | {r['utt_per_s']:.2f} | {ratio:.2f} "
                     f"| {r['peak_memory']} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Run and print the table (or JSON)."""
    args = parse_args(argv)
    result = run(args)
    print(json.dumps(result, indent=2) if args.json else markdown(result))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
