"""What a benchmark's numbers were measured on (shared by the benchmark scripts)."""

from __future__ import annotations

import os
import platform
from typing import Any

import lightning as L
import torch


def machine(device: torch.device | None = None) -> dict[str, Any]:
    """CPU count, threads, versions, platform, GPU name and the 1-minute load average."""
    cuda = device is not None and device.type == "cuda" or device is None and torch.cuda.is_available()
    info = {
        "nproc": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": L.__version__,
        "platform": platform.platform(),
        "cuda": torch.cuda.get_device_name(device) if cuda else None,
    }
    try:
        info["loadavg_1m"] = os.getloadavg()[0]
    except OSError:
        pass
    return info
