"""JSON objects of every DDP rank, gathered with plain tensor collectives (``all_gather_object`` is avoided)."""

from __future__ import annotations

import json
from typing import Any

import torch
import torch.distributed as dist


def gather_json(obj: Any, world_size: int, device: torch.device) -> list[Any]:
    """``obj`` (JSON-able) of every rank, in rank order; a collective call under DDP, so every rank must make it.

    Sent as padded UTF-8 JSON tensors on ``device`` (NCCL needs CUDA tensors); ``all_gather_object`` is
    avoided: with gloo across nodes it aborted the process at exit.
    """
    if world_size <= 1 or not (dist.is_available() and dist.is_initialized()):
        return [obj]
    # frombuffer / tobytes, not Python lists of ints: the test predictions of a large split are megabytes
    data = torch.frombuffer(bytearray(json.dumps(obj).encode("utf-8")), dtype=torch.uint8).to(device)
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([data.numel()], dtype=torch.long, device=device))
    width = max(int(n) for n in sizes)
    padded = [torch.zeros(width, dtype=torch.uint8, device=device) for _ in sizes]
    dist.all_gather(padded, torch.cat([data, data.new_zeros(width - data.numel())]))
    return [json.loads(p[: int(n)].cpu().numpy().tobytes().decode("utf-8")) for p, n in zip(padded, sizes, strict=True)]
