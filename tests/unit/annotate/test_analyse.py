"""ser-annotate analyse on a store with a known generating process: JS(n), the saturation point, Table 3, tertiles."""

import itertools
import json
import math
import sqlite3

import numpy as np
import pytest
from scipy.optimize import curve_fit
from scipy.spatial.distance import jensenshannon
from scipy.stats import entropy as scipy_entropy
from shard_fixtures import tone, utterance, write_clips

from ser_lightning.annotate.analyse import analyse_store, fit_saturation, integer_counts, js_bits

CLASSES = ("Anger", "Happiness", "Neutral", "Sadness")
SCHEMA = """CREATE TABLE annotations (id TEXT, backend TEXT, model TEXT, mode TEXT, k INTEGER, persona INTEGER,
    temperature REAL, label TEXT, probabilities TEXT, raw TEXT, reason TEXT, created TEXT,
    UNIQUE (id, backend, model, mode, k))"""
HUMAN = [[8, 2, 0, 0], [5, 3, 2, 0], [3, 3, 2, 2]]  # three ambiguity levels, 100 utterances each
PER_LEVEL = 100
N = 12  # synthetic answers per utterance, i.i.d. from the utterance's human distribution


def expected_js(p: np.ndarray, n: int) -> float:
    """E[JS(counts / n, p)] in bits over counts ~ Multinomial(n, p), by enumerating every outcome."""
    total = 0.0
    for counts in itertools.product(range(n + 1), repeat=len(p) - 1):
        last = n - sum(counts)
        if last < 0:
            continue
        c = np.array([*counts, last])
        log_prob = math.lgamma(n + 1) - sum(math.lgamma(x + 1) for x in c)
        if np.any((c > 0) & (p == 0)):
            continue
        log_prob += float(np.sum(c[p > 0] * np.log(p[p > 0])))
        total += math.exp(log_prob) * jensenshannon(c / n, p, base=2) ** 2
    return total


def reference_saturation(ns: np.ndarray, js: np.ndarray) -> tuple[int, np.ndarray]:
    """The authors' recipe with scipy: curve_fit of a - b exp(-c n) to max(JS) - JS; first n within 10%."""
    model = lambda x, a, b, c: a - b * np.exp(-c * x)  # noqa: E731
    params, _ = curve_fit(model, ns, js.max() - js, p0=(0.3, 0.5, 0.5), maxfev=10000)
    a, b, c = params
    crossing = math.log(b / (0.1 * a)) / c  # a - b exp(-c n) >= 0.9 a  <=>  n >= ln(b / 0.1a) / c
    return math.ceil(crossing), params


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """300 utterances (3 human vote vectors) and a store of N i.i.d. answers each, plus one invalid answer."""
    root = tmp_path_factory.mktemp("analyse")
    rng = np.random.default_rng(7)
    clips, rows = [], []
    for level, votes in enumerate(HUMAN):
        p = np.array(votes) / sum(votes)
        for i in range(PER_LEVEL):
            uid = f"u{level}_{i:03d}"
            clips.append((utterance(uid, "train", votes), tone(0.05)))
            labels = rng.choice(len(CLASSES), size=N, p=p)
            rows += [(uid, k, CLASSES[c]) for k, c in enumerate(labels)] + [(uid, N, None)]
    write_clips(clips, root / "shards")
    with sqlite3.connect(root / "store.sqlite") as conn:
        conn.execute(SCHEMA)
        conn.executemany(
            "INSERT INTO annotations VALUES (?, 'gemini', 'm', 'sample', ?, 0, 0.5, ?, NULL, 'raw', NULL, 'now')", rows
        )
    conn.close()
    result = analyse_store(root / "store.sqlite", root / "shards", root / "out", seed=3)
    return root, rows, result


def test_js_bits_matches_scipy():
    rng = np.random.default_rng(0)
    p, q = rng.dirichlet(np.ones(5), size=20), rng.dirichlet(np.ones(5), size=20)
    p[0] = [1, 0, 0, 0, 0]
    expected = [jensenshannon(a, b, base=2) ** 2 for a, b in zip(p, q, strict=True)]
    np.testing.assert_allclose(js_bits(p, q), expected, atol=1e-12)


def test_fit_recovers_an_exact_saturation_curve():
    ns = np.arange(1, 21)
    js = 0.3 + 0.5 * np.exp(-0.4 * ns)  # max at n=1: a = max - 0.3, so ln(0.5 / 0.1a) / 0.4 = 6.76
    fit = fit_saturation(ns, js)
    a = js.max() - 0.3
    assert fit["a"] == pytest.approx(a, rel=1e-6)
    assert fit["b"] == pytest.approx(0.5, rel=1e-6)
    assert fit["c"] == pytest.approx(0.4, rel=1e-6)
    assert fit["asymptote"] == pytest.approx(0.3, abs=1e-9)
    crossing = math.log(0.5 / (0.1 * a)) / 0.4
    assert fit["saturation_n"] == math.ceil(crossing) == 7
    assert crossing <= fit["saturation_x"] < crossing + 19 / 99  # the first point of the notebook's 100-point grid


def test_js_per_n_follows_the_multinomial_expectation(corpus):
    _, _, result = corpus
    sat = result["saturation"]
    assert sat["n"] == list(range(1, N + 1))
    expected = [np.mean([expected_js(np.array(v) / sum(v), n) for v in HUMAN]) for n in sat["n"]]
    # 300 utterances x 5 draws per n: the mean is within a few standard errors of its expectation
    np.testing.assert_allclose(sat["js_mean"], expected, atol=0.01)
    assert np.all(np.diff(sat["js_mean"]) < 0.005)  # decays
    assert len(sat["js_draws"][0]) == 5


def test_the_saturation_point_of_the_generating_process_is_recovered(corpus):
    _, _, result = corpus
    ns = np.arange(1, N + 1)
    expected = np.array([np.mean([expected_js(np.array(v) / sum(v), n) for v in HUMAN]) for n in ns])
    derived, params = reference_saturation(ns, expected)
    assert 3 <= derived <= N - 2  # a saturation point inside the sweep, not at its ends
    assert abs(result["saturation"]["fit"]["saturation_n"] - derived) <= 1
    exact = fit_saturation(ns, expected)  # our least squares on the exact curve agrees with scipy's
    np.testing.assert_allclose([exact["a"], exact["b"], exact["c"]], params, rtol=1e-3)
    assert exact["saturation_n"] == derived


def test_table3_and_tertiles_against_direct_computation(corpus):
    root, rows, result = corpus
    synthetic = {}
    for uid, _, label in rows:
        if label is not None:
            synthetic.setdefault(uid, np.zeros(4))[CLASSES.index(label)] += 1
    ids = sorted(synthetic)
    human = np.array([HUMAN[int(uid[1])] for uid in ids], dtype=float)
    syn = np.array([synthetic[uid] for uid in ids])
    table = result["table3"]
    for name, votes in (("human", human), ("synthetic", syn), ("combined", human + syn)):
        assert table[name]["entropy_mean"] == pytest.approx(np.mean([scipy_entropy(v) for v in votes]))
        n_i = votes.sum(1)
        p_bar = (((votes**2).sum(1) - n_i) / (n_i * (n_i - 1))).mean()  # Fleiss (1971), per-item agreement
        p_e = ((votes.sum(0) / votes.sum()) ** 2).sum()
        assert table[name]["fleiss_kappa"] == pytest.approx((p_bar - p_e) / (1 - p_e))
    tertiles = result["tertiles"]
    for level, name in enumerate(("low", "medium", "high")):  # HUMAN is listed by rising entropy
        sel = [i for i, uid in enumerate(ids) if uid.startswith(f"u{level}_")]
        assert tertiles[name]["items"] == PER_LEVEL
        js = [jensenshannon(syn[i] / syn[i].sum(), human[i] / human[i].sum(), base=2) ** 2 for i in sel]
        assert tertiles[name]["js_synthetic"] == pytest.approx(np.mean(js))
    written = json.loads((root / "out" / "analysis.json").read_text())
    assert written["saturation"]["fit"] == result["saturation"]["fit"]
    for png in ("saturation.png", "ambiguity.png"):
        assert (root / "out" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_subsets_follow_the_seed(corpus, tmp_path):
    root, _, result = corpus
    again = analyse_store(root / "store.sqlite", root / "shards", tmp_path / "a", seed=3)
    other = analyse_store(root / "store.sqlite", root / "shards", tmp_path / "b", seed=4, n=6)
    assert again["saturation"]["js_draws"] == result["saturation"]["js_draws"]
    assert other["saturation"]["n"] == list(range(1, 7))
    assert other["saturation"]["js_draws"][0] != result["saturation"]["js_draws"][0]


def test_exact_mode_distributions_are_averaged_and_left_out_of_kappa(corpus, tmp_path):
    """An exact-mode annotator of the same shards: no kappa for its fractional rows (counted), no combined source."""
    root, _, sampled = corpus
    rng = np.random.default_rng(11)
    rows, dists = [], {}
    for level, votes in enumerate(HUMAN):
        for i in range(PER_LEVEL):
            uid = f"u{level}_{i:03d}"
            draws = rng.dirichlet(np.array(votes, dtype=float) + 0.5, size=3)
            dists[uid] = draws.mean(0)
            rows += [(uid, k, CLASSES[int(p.argmax())], json.dumps(p.tolist())) for k, p in enumerate(draws)]
    store = tmp_path / "exact.sqlite"
    with sqlite3.connect(store) as conn:
        conn.execute(SCHEMA)
        conn.executemany("INSERT INTO annotations VALUES (?, 'qwen2-audio', 'q', 'exact', ?, 0, 0.5, ?, ?, 'raw', NULL,"
                         " 'now')", rows)  # fmt: skip
    conn.close()
    result = analyse_store(store, root / "shards", tmp_path / "out", seed=3)
    table = result["table3"]
    assert set(table) == {"human", "synthetic"}  # a distribution is not added to the human votes
    assert table["synthetic"]["fleiss_kappa"] is None
    assert table["synthetic"]["kappa_items"] == 0
    assert table["synthetic"]["kappa_excluded_items"] == 3 * PER_LEVEL
    assert table["synthetic"]["kappa_note"].startswith(f"{3 * PER_LEVEL} of {3 * PER_LEVEL} utterances left out")
    assert table["human"] == sampled["table3"]["human"]  # integer human votes: kappa as before, none left out
    assert table["human"]["kappa_excluded_items"] == 0
    ids = sorted(dists)
    mean = np.array([dists[uid] for uid in ids])
    assert table["synthetic"]["entropy_mean"] == pytest.approx(np.mean([scipy_entropy(p) for p in mean]))
    assert result["answers_per_utterance"] == {"min": 3, "max": 3}
    human = np.array([HUMAN[int(uid[1])] for uid in ids], dtype=float)
    js = [jensenshannon(p, h / h.sum(), base=2) ** 2 for p, h in zip(mean, human, strict=True)]
    assert result["saturation"]["js_mean"][-1] == pytest.approx(np.mean(js))  # n = 3: the mean of all three
    assert all(result["tertiles"][t]["js_combined"] is None for t in ("low", "medium", "high"))


def test_integer_counts():
    assert integer_counts(np.array([[2.0, 3.0], [0.5, 0.5], [1.0 + 1e-12, 0.0]])).tolist() == [True, False, True]
