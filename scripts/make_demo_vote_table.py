"""Generate ``ser_lightning/data/demo/votes.json`` from CREMA-D's real voice-only rater votes.

The table (package data of :mod:`ser_lightning.data.demo.votes`) holds aggregate figures only (no per-clip
rows) for each of the 21
(intended emotion, level) cells of CREMA-D: the number of clips, the mean vote distribution, the
histogram of the number of raters (4-12) and the precision of a Dirichlet-multinomial fitted by
moments, so that the demo corpus (``python -m ser_lightning.data.demo build``) can draw realistic
per-clip vote vectors that reproduce both the mean and the disagreement of real raters.

Run from the repository root (the only place that reads ``../shared``)::

    .venv/bin/python scripts/make_demo_vote_table.py [--votes ../shared/data/crema-d/tabulatedVotes.csv]

It prints the reference JS divergences (log base 2, averaged over clips) of three constant
predictors on the real data and the same figures on votes simulated from the fitted table.

Moment fit: with ``rho = 1 / (1 + precision)`` a Dirichlet-multinomial with mean ``m`` and ``n`` raters has
``E[sum_c (p_c - m_c)^2] = S (1/n + (1 - 1/n) rho)`` with ``S = sum_c m_c (1 - m_c)``; averaging over the
cell's clips gives ``rho = (V / S - h) / (1 - h)``, ``V`` the observed mean squared spread and ``h`` the mean
of ``1/n``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np

from ser_lightning.corpora.crema_d import read_tabulated_votes
from ser_lightning.labels import entropy, fleiss_kappa

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VOTES = REPO_ROOT.parent / "shared" / "data" / "crema-d" / "tabulatedVotes.csv"
DEFAULT_OUT = REPO_ROOT / "ser_lightning" / "data" / "demo" / "votes.json"
CLASSES = ("Anger", "Disgust", "Fear", "Happy", "Neutral", "Sad")
EMOTIONS = ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")
LEVELS = ("LO", "MD", "HI", "XX")
RATERS = tuple(range(4, 13))
RHO_LIMITS = (1e-3, 0.999)


def js_log2(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence in bits between rows of ``p`` and ``q`` (broadcast)."""
    p, q = np.broadcast_arrays(np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64))
    m = 0.5 * (p + q)

    def kl(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        safe_a = np.where(a > 0, a, 1.0)
        safe_b = np.where(a > 0, b, 1.0)
        return np.where(a > 0, a * np.log2(safe_a / safe_b), 0.0).sum(axis=-1)

    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def cell_of(file_name: str) -> tuple[str, str]:
    """(emotion, level) of a CREMA-D file name ``ActorID_Sentence_Emotion_Level``."""
    parts = file_name.split("_")
    if len(parts) != 4 or parts[2] not in EMOTIONS or parts[3] not in LEVELS:
        raise ValueError(f"unexpected CREMA-D file name {file_name!r}")
    return parts[2], parts[3]


def fit_cell(counts: np.ndarray) -> dict:
    """Aggregates of one cell's clips x 6 vote counts: clips, mean, precision, rater histogram."""
    n = counts.sum(axis=1)
    p = counts / n[:, None]
    mean = p.mean(axis=0)
    spread = float(((p - mean) ** 2).sum(axis=1).sum() / (len(p) - 1))
    s = float((mean * (1 - mean)).sum())
    h = float((1.0 / n).mean())
    rho = float(np.clip((spread / s - h) / (1 - h), *RHO_LIMITS))
    hist = Counter(int(k) for k in n)
    if set(hist) - set(RATERS):
        raise ValueError(f"rater counts outside {RATERS[0]}-{RATERS[-1]}: {sorted(set(hist) - set(RATERS))}")
    return {
        "clips": len(p),
        "mean": mean,
        "precision": (1 - rho) / rho,
        "raters": tuple(hist.get(k, 0) for k in RATERS),
    }


def reference_js(p: np.ndarray, cells: list[tuple[str, str]]) -> dict[str, float]:
    """Mean JS (bits) of the uniform, overall-mean and per-cell-mean predictors on distributions ``p``."""
    cell_mean = {c: p[[i for i, x in enumerate(cells) if x == c]].mean(axis=0) for c in set(cells)}
    per_clip = np.stack([cell_mean[c] for c in cells])
    return {
        "uniform": float(js_log2(p, np.full(p.shape[1], 1 / p.shape[1])).mean()),
        "overall_mean": float(js_log2(p, p.mean(axis=0)).mean()),
        "cell_mean": float(js_log2(p, per_clip).mean()),
    }


def simulate(table: dict, cells: list[tuple[str, str]], seed: int = 0) -> np.ndarray:
    """Vote distributions drawn from the fitted table, one per clip of ``cells`` (same cell multiset)."""
    rng = np.random.default_rng(seed)
    out = []
    for c in cells:
        fit = table[c]
        raters = rng.choice(RATERS, p=np.asarray(fit["raters"]) / sum(fit["raters"]))
        alpha = fit["precision"] * np.asarray(fit["mean"])
        probs = np.zeros(len(CLASSES))
        pos = alpha > 0
        probs[pos] = rng.dirichlet(alpha[pos])
        votes = rng.multinomial(raters, probs)
        out.append(votes / votes.sum())
    return np.asarray(out)


def source_commit(votes_path: Path) -> str:
    """The CREMA-D repository commit named in the data folder's README (``unknown`` if absent)."""
    readme = votes_path.parent / "README.md"
    if readme.is_file():
        found = re.search(r"commit\s+([0-9a-f]{40})", readme.read_text(encoding="utf-8"))
        if found:
            return found.group(1)
    return "unknown"


def _round(value: float, digits: int) -> float:
    """``value`` as the float its ``digits``-decimal string denotes (what the table stores)."""
    return float(f"{float(value):.{digits}f}")


def render(table: dict, meta: dict, ref: dict, sim: dict) -> str:
    """JSON text of the generated table: one line per key, one line per cell."""
    order = sorted(table, key=lambda c: (EMOTIONS.index(c[0]), LEVELS.index(c[1])))
    head = {
        "about": "Aggregate CREMA-D voice-only rater statistics per (intended emotion, level), for the demo corpus. "
        "Aggregates only, no per-clip rows. Source: CREMA-D (Cao et al., IEEE Trans. Affective Computing 5(4), "
        "2014), processedResults/tabulatedVotes.csv, Open Database License / Database Contents License. "
        "Generated by scripts/make_demo_vote_table.py; do not edit, re-run the script.",
        "classes": list(CLASSES),
        "emotions": list(EMOTIONS),
        "levels": list(LEVELS),
        "raters": list(RATERS),
        "source": {
            "file": meta["name"],
            "modality": "voice",
            "crema_d_commit": meta["commit"],
            "sha256": meta["sha256"],
            "clips": meta["rows"],
        },
        # mean JS divergence (bits) of constant predictors on the real voice-only distributions
        "reference_js": {k: _round(v, 4) for k, v in ref.items()},
        # the same on one draw of votes simulated from the cells (seed 0, same clips per cell)
        "simulated_js": {k: _round(v, 4) for k, v in sim.items()},
        # mean entropy (nats) of the real per-clip distributions and Fleiss' kappa of the real votes
        "reference_stats": {k: _round(meta[k], 4) for k in ("entropy_mean", "fleiss_kappa")},
    }
    cells = {
        f"{e}_{lv}": {
            "clips": int(table[(e, lv)]["clips"]),
            "mean": [_round(v, 6) for v in table[(e, lv)]["mean"]],
            "precision": _round(table[(e, lv)]["precision"], 4),
            "raters": [int(n) for n in table[(e, lv)]["raters"]],
        }
        for e, lv in order
    }
    lines = [f"  {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}," for k, v in head.items()]
    lines.append('  "cells": {')
    lines += [f"    {json.dumps(k)}: {json.dumps(v)}," for k, v in cells.items()]
    lines[-1] = lines[-1].rstrip(",")
    return "{\n" + "\n".join(lines) + "\n  }\n}\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--votes", type=Path, default=DEFAULT_VOTES, help="CREMA-D tabulatedVotes.csv")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="generated JSON table")
    args = parser.parse_args(argv)

    vt = read_tabulated_votes(args.votes, "voice")
    cells = [cell_of(name) for name in vt.file_names]
    table = {c: fit_cell(vt.counts[[i for i, x in enumerate(cells) if x == c]]) for c in sorted(set(cells))}
    if len(table) != 21:
        raise SystemExit(f"expected 21 (emotion, level) cells, found {len(table)}: {sorted(table)}")
    p = vt.counts / vt.counts.sum(axis=1, keepdims=True)
    ref = reference_js(p, cells)
    sim = reference_js(simulate(table, cells, seed=0), cells)
    meta = {
        "name": args.votes.name,
        "commit": source_commit(args.votes),
        "sha256": hashlib.sha256(args.votes.read_bytes()).hexdigest(),
        "rows": len(p),
        "entropy_mean": float(entropy(p).mean()),
        "fleiss_kappa": fleiss_kappa(vt.counts).kappa,
    }
    args.out.write_text(render(table, meta, ref, sim), encoding="utf-8")
    print(f"{len(p)} voice-only clips, {len(table)} cells -> {args.out}")
    print("mean JS (log2)   real    simulated")
    for k in ref:
        print(f"  {k:<13} {ref[k]:.4f}  {sim[k]:.4f}")
    print(f"mean entropy {meta['entropy_mean']:.4f} nats, Fleiss' kappa {meta['fleiss_kappa']:.4f}")
    print("cell       clips  precision  top class")
    for key in sorted(table, key=lambda c: (EMOTIONS.index(c[0]), LEVELS.index(c[1]))):
        fit = table[key]
        top = int(np.argmax(fit["mean"]))
        print(f"  {key[0]}_{key[1]}  {fit['clips']:5d}  {fit['precision']:9.3f}  {CLASSES[top]} {fit['mean'][top]:.3f}")


if __name__ == "__main__":
    main()
