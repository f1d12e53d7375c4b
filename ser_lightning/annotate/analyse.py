"""``ser-annotate analyse``: how many synthetic annotations approximate the human distribution (Sec. 4.1, Fig. 2).

As the authors computed it (``evaluation/saturation_analysis.ipynb`` of WendaZhang08/scaling-ambiguity-SER:
``evaluate_annotator_count`` and ``fit_and_plot_curve``): for n = 1..N and 5 random draws, each utterance's
distribution of n of its synthetic answers (drawn without replacement; all of them when it has fewer) is
compared with its human distribution by JS divergence (bits), averaged over utterances, then over draws.
``a - b·exp(-c·n)`` is fitted to ``max(JS) - JS``; the asymptote is ``max(JS) - a`` and the saturation
point the first n whose fitted JS lies within 10% of the fitted range (``max(JS)`` - asymptote) above the
asymptote. Also Table 3 (Fleiss' kappa and mean entropy of the human, synthetic and combined annotations)
and the JS to the human distribution per tertile of human entropy (Fig. 3). Writes JSON and PNG figures.

An exact-mode annotator's answers are class distributions: n of them are averaged (not counted), there is
no ``combined`` (a distribution is no votes to add to the human ones), and Fleiss' kappa, whose P_i needs
integer counts, is reported only over utterances whose votes are integer counts: the others (every
exact-mode one, or fractional human votes) are left out and counted in ``kappa_excluded_items``.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ser_lightning.annotate.merge import exact_distribution, read_synthetic
from ser_lightning.data.shards.card import iter_shard_meta, read_card
from ser_lightning.labels import entropy, fleiss_kappa, normalized_entropy, quantile_edges

__all__ = ["analyse_store", "answer_matrix", "fit_saturation", "integer_counts", "js_bits", "saturation_curve"]

log = logging.getLogger(__name__)

DRAWS = 5  # random subsets per n, as in the authors' notebook (num_runs=5)
SATURATION_FRACTION = 0.1  # within 10% of the fitted range above the asymptote
TERTILES = ("low", "medium", "high")


def js_bits(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence in bits over the last axis, ½ KL(p‖m) + ½ KL(q‖m) with m = ½(p + q)."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    p, q = p / p.sum(-1, keepdims=True), q / q.sum(-1, keepdims=True)
    m = 0.5 * (p + q)

    def kl(a: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(a > 0, a * np.log2(np.where(a > 0, a, 1.0) / np.where(m > 0, m, 1.0)), 0.0).sum(-1)

    return 0.5 * kl(p) + 0.5 * kl(q)


def saturation_curve(n: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    """The authors' saturation model ``a - b·exp(-c·n)``."""
    return a - b * np.exp(-c * np.asarray(n, dtype=np.float64))


def _fit_exp(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Least squares ``(a, b, c)`` of ``y ≈ a - b·exp(-c·x)``, c > 0: linear in (a, b) given c; 1-D search on log c."""

    def solve(log_c: float) -> tuple[float, float, float]:
        basis = np.stack([np.ones_like(x), -np.exp(-math.exp(log_c) * x)], axis=1)
        (a, b), *_ = np.linalg.lstsq(basis, y, rcond=None)
        return float(((basis @ np.array([a, b]) - y) ** 2).sum()), float(a), float(b)

    grid = np.linspace(math.log(1e-3), math.log(1e2), 401)
    sse = [solve(g)[0] for g in grid]
    i = int(np.argmin(sse))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    golden = (math.sqrt(5) - 1) / 2
    for _ in range(80):  # golden-section refinement inside the grid's bracket
        m1, m2 = hi - golden * (hi - lo), lo + golden * (hi - lo)
        if solve(m1)[0] <= solve(m2)[0]:
            hi = m2
        else:
            lo = m1
    log_c = (lo + hi) / 2
    _, a, b = solve(log_c)
    return a, b, math.exp(log_c)


def fit_saturation(n: np.ndarray, js: np.ndarray) -> dict[str, Any]:
    """Fit the saturation curve to mean JS per n and find the saturation point, as ``fit_and_plot_curve`` does.

    JS is lower-is-better, so ``a - b·exp(-c·n)`` is fitted to ``max(JS) - JS``. Returns ``a``, ``b``, ``c``,
    ``asymptote`` (``max(JS) - a``), ``threshold`` (asymptote + 10% of ``max(JS)`` - asymptote),
    ``saturation_n`` (first n of ``n`` whose fitted JS is at or below the threshold; ``None`` if none) and
    ``saturation_x`` (the same on the notebook's 100-point grid over [min n, max n], which its figure rounds).
    """
    n = np.asarray(n, dtype=np.float64)
    js = np.asarray(js, dtype=np.float64)
    if n.size < 3:
        raise ValueError(f"the saturation fit needs at least 3 annotation counts, got {n.size}")
    top = float(js.max())
    a, b, c = _fit_exp(n, top - js)
    asymptote = top - a
    threshold = asymptote + SATURATION_FRACTION * (top - asymptote)

    def first_below(xs: np.ndarray) -> float | None:
        below = np.nonzero(top - saturation_curve(xs, a, b, c) <= threshold)[0]
        return float(xs[below[0]]) if below.size else None

    sat_n = first_below(n)
    return {
        "a": a, "b": b, "c": c, "asymptote": asymptote, "threshold": threshold,
        "saturation_n": None if sat_n is None else int(sat_n),
        "saturation_x": first_below(np.linspace(n.min(), n.max(), 100)),
    }  # fmt: skip


def answer_matrix(
    rows: list[tuple[int, str | None, list[float] | None]], classes: tuple[str, ...], exact: bool = False
) -> np.ndarray:
    """One row per valid answer of an utterance: a one-hot vote of its label, or (``exact``) its distribution."""
    if exact:
        out = [exact_distribution(probs, len(classes)) for _, _, probs in rows]
    else:
        out = [np.eye(len(classes))[classes.index(label)] if label in classes else None for _, label, _ in rows]
    return np.asarray([v for v in out if v is not None], dtype=np.float64).reshape(-1, len(classes))


def _sweep(answers: list[np.ndarray], human: np.ndarray, counts: range, seed: int) -> np.ndarray:
    """Mean JS (bits) over utterances per (n, draw): n random answers of each utterance vs its human distribution."""
    num, most = len(answers), max(len(a) for a in answers)
    padded = np.zeros((num, most, human.shape[1]))
    have = np.array([len(a) for a in answers])
    for i, a in enumerate(answers):
        padded[i, : len(a)] = a
    out = np.zeros((len(counts), DRAWS))
    for j, n in enumerate(counts):
        for d in range(DRAWS):
            rng = np.random.default_rng([seed, n, d])
            keys = rng.random((num, most))
            keys[np.arange(most)[None, :] >= have[:, None]] = np.inf  # only the utterance's own answers
            order = np.argsort(keys, axis=1)[:, :n]
            take = np.arange(order.shape[1])[None, :] < np.minimum(n, have)[:, None]
            picked = np.take_along_axis(padded, order[:, :, None], axis=1) * take[:, :, None]
            out[j, d] = js_bits(picked.sum(1), human).mean()
    return out


def integer_counts(votes: np.ndarray) -> np.ndarray:
    """Per item, whether its vote vector holds integer counts (Fleiss' P_i is defined for counts only)."""
    return np.isclose(votes, np.round(votes), rtol=0.0, atol=1e-9).all(axis=1)


def _table3(sources: dict[str, np.ndarray], counted: dict[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """Table 3 per source: Fleiss' kappa over its ``counted`` items, and mean entropy (nats, and / log C) of all."""
    table = {}
    for name, votes in sources.items():
        keep = counted[name]
        kappa = fleiss_kappa(votes[keep])
        h = entropy(votes)
        table[name] = {
            "fleiss_kappa": None if math.isnan(kappa.kappa) else kappa.kappa,
            "kappa_items": kappa.items,
            "kappa_excluded_items": int((~keep).sum()),  # not integer counts (exact-mode distributions)
            "entropy_mean": float(h.mean()),
            "entropy_mean_normalised": float(normalized_entropy(h.mean(), votes.shape[1])),
        }
        if not keep.all():
            note = f"{int((~keep).sum())} of {len(keep)} utterances left out of Fleiss' kappa: not integer vote counts"
            table[name]["kappa_note"] = note + " (exact-mode distributions or fractional votes)"
            log.warning("%s: %s", name, table[name]["kappa_note"])
    return table


def _tertiles(human: np.ndarray, synthetic: np.ndarray, combined: np.ndarray | None) -> dict[str, Any]:
    """Mean JS (bits) of the synthetic and combined (None: none) distributions to the human one per entropy tertile."""
    h = entropy(human)
    edges = quantile_edges(h, 3)
    bins = np.searchsorted(edges, h, side="left")  # edges[i-1] < h <= edges[i], as the binned metrics do
    out: dict[str, Any] = {"edges": [float(e) for e in edges]}
    js_s = js_bits(synthetic, human)
    js_c = None if combined is None else js_bits(combined, human)
    for i, name in enumerate(TERTILES):
        sel = bins == i
        out[name] = {
            "items": int(sel.sum()),
            "js_synthetic": float(js_s[sel].mean()) if sel.any() else None,
            "js_combined": float(js_c[sel].mean()) if sel.any() and js_c is not None else None,
        }
    return out


def _plot_saturation(path: Path, counts: np.ndarray, js: np.ndarray, fit: dict[str, Any] | None) -> None:
    fig = Figure(figsize=(4, 3), layout="tight")
    ax = fig.add_subplot()
    ax.errorbar(counts, js.mean(1), yerr=js.std(1, ddof=1), fmt="o-", capsize=4, label="JS (mean of 5 draws)")
    if fit is not None:
        xs = np.linspace(counts.min(), counts.max(), 100)
        top = float(js.mean(1).max())
        ax.plot(xs, top - saturation_curve(xs, fit["a"], fit["b"], fit["c"]), "r--", label="fitted curve")
        if fit["saturation_n"] is not None:
            ax.axvline(fit["saturation_n"], color="g", linestyle="--", label=f"saturation: {fit['saturation_n']}")
    ax.set_xlabel("number of synthetic annotations")
    ax.set_ylabel("JS divergence (bits)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=150)


def _plot_tertiles(path: Path, tertiles: dict[str, Any]) -> None:
    fig = Figure(figsize=(4, 3), layout="tight")
    ax = fig.add_subplot()
    x = np.arange(len(TERTILES))
    for offset, key in ((-0.2, "js_synthetic"), (0.2, "js_combined")):
        if all(tertiles[t][key] is None for t in TERTILES):
            continue  # an exact-mode annotator has no combined source
        values = [tertiles[t][key] or 0.0 for t in TERTILES]
        ax.bar(x + offset, values, 0.4, label=key.removeprefix("js_"))
    ax.set_xticks(x, [t.capitalize() for t in TERTILES])
    ax.set_xlabel("human ambiguity (entropy tertile)")
    ax.set_ylabel("JS to human (bits)")
    ax.legend()
    fig.savefig(path, dpi=150)


def analyse_store(
    store: str | Path,
    shards: str | Path,
    out_dir: str | Path,
    n: int | None = None,
    seed: int = 0,
    backend: str | None = None,
    model: str | None = None,
    mode: str | None = None,
    human: str = "primary",
) -> dict[str, Any]:
    """Saturation analysis, Table 3 and JS per ambiguity tertile of a store against its shards' human votes.

    Utterances in both the store and the shards with at least one valid synthetic answer are analysed.

    Args:
        store: the annotation store (SQLite, ``ser-annotate run --out``).
        shards: the shard directory the store annotated (human votes from ``votes[human]``).
        out_dir: where ``analysis.json``, ``saturation.png`` and ``ambiguity.png`` are written.
        n: use the annotations ``k < n`` and sweep n = 1..``n``; ``None``: all, up to the most valid answers.
        seed: seed of the random subsets (draw ``d`` of count ``n`` uses ``(seed, n, d)``).
        backend: the annotator's backend; needed only when the store holds several annotators.
        model: the annotator's model (same).
        mode: ``sample`` or ``exact`` (same).
        human: the label source of the human votes.

    Returns:
        The analysis (also in ``out_dir/analysis.json``): ``annotator``, ``utterances``, ``saturation``
        (``n``, ``js_mean``, ``js_std``, ``js_draws``, ``fit``), ``table3`` (per source ``fleiss_kappa`` over
        ``kappa_items``, ``kappa_excluded_items`` left out as not integer counts, entropies), ``tertiles``.
    """
    classes = tuple(read_card(shards, human)["classes"])
    answers = read_synthetic(store, n, backend, model, mode)
    exact = answers.annotator.exact
    ids, human_votes, matrices = [], [], []
    for meta in iter_shard_meta(shards, sources=(human,)):
        rows = answers.rows.get(str(meta["id"]))
        matrix = answer_matrix(rows, classes, exact) if rows else None
        if matrix is not None and len(matrix):
            ids.append(str(meta["id"]))
            human_votes.append(meta["votes"][human])
            matrices.append(matrix)
    if not ids:
        raise ValueError(f"{store}: no utterance of {shards} has a valid synthetic answer")
    human_arr = np.asarray(human_votes, dtype=np.float64)
    most = n if n is not None else max(len(m) for m in matrices)
    counts = range(1, most + 1)
    js = _sweep(matrices, human_arr / human_arr.sum(1, keepdims=True), counts, seed)
    fit = fit_saturation(np.arange(1, most + 1), js.mean(1)) if most >= 3 else None
    synthetic = np.stack([m.mean(0) if exact else m.sum(0) for m in matrices])  # a distribution, or vote counts
    sources = {"human": human_arr, "synthetic": synthetic}
    counted = {
        "human": integer_counts(human_arr),
        "synthetic": np.full(len(ids), not exact) & integer_counts(synthetic),
    }
    if not exact:
        sources["combined"] = human_arr + synthetic
        counted["combined"] = counted["human"] & counted["synthetic"]
    result = {
        "annotator": vars(answers.annotator),
        "human": human,
        "seed": seed,
        "utterances": len(ids),
        "answers_per_utterance": {"min": min(map(len, matrices)), "max": max(map(len, matrices))},
        "saturation": {
            "n": list(counts),
            "js_mean": js.mean(1).tolist(),
            "js_std": js.std(1, ddof=1).tolist(),
            "js_draws": js.tolist(),
            "fit": fit,
        },
        "table3": _table3(sources, counted),
        "tertiles": _tertiles(human_arr, synthetic, sources.get("combined")),
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "analysis.json").write_text(json.dumps(result, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    _plot_saturation(out / "saturation.png", np.arange(1, most + 1), js, fit)
    _plot_tertiles(out / "ambiguity.png", result["tertiles"])
    return result
