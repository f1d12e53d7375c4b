"""Which question annotation ``k`` of an utterance asks: its persona and temperature, from (seed, id, k) alone.

The authors' notebook (``WendaZhang08/scaling-ambiguity-SER``,
``approximated_distribution_generation/synthetic_annotation_generation.ipynb``: ``get_diverse_temperature``
and ``focus_variations[annotator_id % 5]``) gives annotator ``i`` the persona ``i % 5`` and a temperature
from stratum ``i % 5`` of [0.1, 1.0] (a base of 0.1, 0.3, 0.5, 0.7 or 0.9 plus a uniform draw of width
0.2, 0.2, 0.2, 0.2, 0.03, plus a jitter of +-0.05, clipped to [0.1, 1.0]), seeding numpy with ``i``.

Here the draws come from SHA-256 of (seed, id, k) instead of numpy's global seed, so a re-run, another
process or another machine asks exactly the same questions, and annotation ``k`` never depends on N
(raising N keeps the first N). Personas and strata still come in turn (``k, k+1, ...`` modulo 5), but each
utterance enters both cycles at its own offset, so that over a corpus every persona meets every
temperature stratum (in the notebook persona ``p`` always had stratum ``p``) and, when N is not a multiple
of 5, no persona or stratum is favoured corpus-wide.
"""

from __future__ import annotations

import hashlib
import struct

from ser_lightning.alm.prompts import PERSONAS

# (base, width) of the notebook's five temperature strata; then a uniform jitter in [-JITTER, JITTER]
TEMPERATURE_STRATA: tuple[tuple[float, float], ...] = ((0.1, 0.2), (0.3, 0.2), (0.5, 0.2), (0.7, 0.2), (0.9, 0.03))
JITTER = 0.05
TEMPERATURE_RANGE = (0.1, 1.0)


def _uniforms(*keys: object, count: int) -> list[float]:
    """``count`` numbers in [0, 1) from SHA-256 of the keys (stable across processes, unlike ``hash()``)."""
    digest = hashlib.sha256("\x1f".join(str(key) for key in keys).encode("utf-8")).digest()
    return [v / 2**64 for v in struct.unpack(f">{count}Q", digest[: 8 * count])]


def annotation_plan(seed: int, uid: str, k: int) -> tuple[int, float]:
    """``(persona index into PERSONAS, temperature rounded to 2 decimals)`` of annotation ``k`` of utterance ``uid``."""
    if k < 0:
        raise ValueError(f"annotation index k must be >= 0, got {k}")
    persona_start, stratum_start = _uniforms(seed, uid, count=2)
    persona = (int(persona_start * len(PERSONAS)) + k) % len(PERSONAS)
    stratum = (int(stratum_start * len(TEMPERATURE_STRATA)) + k) % len(TEMPERATURE_STRATA)
    within, jitter = _uniforms(seed, uid, k, count=2)
    base, width = TEMPERATURE_STRATA[stratum]
    temperature = base + within * width + (2 * jitter - 1) * JITTER
    low, high = TEMPERATURE_RANGE
    return persona, round(min(high, max(low, temperature)), 2)
