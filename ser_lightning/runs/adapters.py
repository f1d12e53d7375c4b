"""What a Qwen2-Audio LoRA run saves besides its lean checkpoints: peft adapter directories with the head."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from ser_lightning.runs.names import ADAPTER_DIRS, ADAPTER_HEAD_SPEC, ADAPTER_HEAD_WEIGHTS


def write_adapter(model: Any, directory: Path) -> Path:
    """``model.backbone.save_pretrained(directory)`` plus the head's ``head.safetensors`` and ``head.json``.

    Reload with ``load_lora(load_qwen2_audio(backbone)[0], directory)`` and an ``EmotionClassifierHead`` built
    from ``head.json`` loading ``head.safetensors``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    model.backbone.save_pretrained(str(directory))
    head = model.head
    weights = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    save_file(weights, str(directory / ADAPTER_HEAD_WEIGHTS))
    hp = model.hparams
    spec = {
        "hidden_size": head.norm1.normalized_shape[0],
        "num_classes": head.output_dim,
        "num_heads": head.attention.num_heads,
        "dropout": hp.head_dropout,
        "projection_dropout": hp.head_projection_dropout,
        "classes": list(model.classes),
        "backbone": hp.backbone,
    }
    (directory / ADAPTER_HEAD_SPEC).write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")
    return directory


def adapter_targets(checkpoint_callback: Any) -> list[tuple[Path, Path]]:
    """``(checkpoint, adapter directory)`` for the best and the last checkpoint that exist (``best_adapter/``...)."""
    if checkpoint_callback is None:
        return []
    targets = []
    for attr, name in ADAPTER_DIRS.items():
        path = getattr(checkpoint_callback, attr, "") or ""
        if path and Path(path).is_file():
            targets.append((Path(path), Path(path).parent / name))
    return targets
