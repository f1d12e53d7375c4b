"""The embedded demo corpus (``shards/demo``), built by ``python -m ser_lightning.data.demo build``.

Its plan and build are in :mod:`.builder`, the voice in :mod:`.synth`, the README in :mod:`.readme` and
the CREMA-D vote table in :mod:`.votes` (package data ``votes.json``).
"""

from ser_lightning.data.demo.builder import (
    CLASSES,
    DEFAULT_VOICES,
    SENTENCES,
    Clip,
    baseline_js,
    build,
    cell_of,
    main,
    make_records,
    plan_clips,
    sample_votes,
    voice_splits,
)

__all__ = [
    "CLASSES",
    "DEFAULT_VOICES",
    "SENTENCES",
    "Clip",
    "baseline_js",
    "build",
    "cell_of",
    "main",
    "make_records",
    "plan_clips",
    "sample_votes",
    "voice_splits",
]
