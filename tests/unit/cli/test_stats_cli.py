import json
import math

import numpy as np
import pytest
from scipy.stats import entropy as scipy_entropy

from ser_lightning.cli.stats import main
from ser_lightning.stats import STATS_KEYS


def _reference_kappa(counts):
    n = counts[counts.sum(1) >= 2]
    r = n.sum(1)
    p_i = ((n**2).sum(1) - r) / (r * (r - 1))
    p_j = n.sum(0) / r.sum()
    pe = (p_j**2).sum()
    return (p_i.mean() - pe) / (1 - pe)


def _real_voice_counts(path):
    import csv

    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r[""].startswith("1")]
    return np.array([[float(r[c]) for c in "ADFHNS"] for r in rows])


def test_ser_stats_crema_d_json(crema_d_votes_path, capsys):
    assert main([str(crema_d_votes_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out) == list(STATS_KEYS)
    counts = _real_voice_counts(crema_d_votes_path)
    assert out["items"] == 7442 == len(counts)
    assert (out["raters_min"], out["raters_median"], out["raters_max"]) == (4, 9, 12)
    assert out["vote_totals"]["Neutral"] == counts[:, 4].sum()
    h = scipy_entropy(counts, axis=1)
    assert out["entropy_mean"] == pytest.approx(h.mean())
    assert out["entropy_mean_normalised"] == pytest.approx(h.mean() / math.log(6))
    assert out["fleiss_kappa"] == pytest.approx(_reference_kappa(counts))
    np.testing.assert_allclose(out["tertile_edges"], np.quantile(h, [1 / 3, 2 / 3]))
    top = counts.max(1, keepdims=True)
    assert out["ties"] == int(((counts == top).sum(1) > 1).sum())


def test_ser_stats_face_modality_and_table(crema_d_votes_path, capsys):
    assert main([str(crema_d_votes_path), "--crema-d-modality", "face"]) == 0
    text = capsys.readouterr().out
    assert "fleiss_kappa" in text
    assert "7442" in text


def test_ser_stats_generic_csv(tmp_path, capsys):
    table = tmp_path / "votes.csv"
    table.write_text("id,Ang,Hap,Sad\nu1,3,0,1\nu2,1.5,1.5,0\nu3,0,0,1\n")
    assert main([str(table), "--classes", "Ang,Hap,Sad", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["items"] == 3
    assert out["raters_min"] == 1
    assert out["vote_totals"] == {"Ang": 4.5, "Hap": 1.5, "Sad": 2}
    assert out["ties"] == 1
    counts = np.array([[3, 0, 1], [1.5, 1.5, 0], [0, 0, 1]])
    assert out["fleiss_kappa"] == pytest.approx(_reference_kappa(counts))


def test_ser_stats_errors_name_the_file_and_line(tmp_path, capsys):
    table = tmp_path / "votes.csv"
    table.write_text("Ang,Hap\n1,2\n1,x\n")
    assert main([str(table), "--classes", "Ang,Hap"]) == 2
    assert f"{table}:3" in capsys.readouterr().err
    assert main([str(table)]) == 2
    assert "--classes" in capsys.readouterr().err
    assert main([str(table), "--classes", "Ang,Sad"]) == 2
    assert "Sad" in capsys.readouterr().err


def test_ser_stats_on_shard_directory(capsys):
    from pathlib import Path

    demo = Path(__file__).resolve().parents[3] / "shards" / "demo"
    card = json.loads((demo / "card.json").read_text())
    assert main([str(demo), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"all", "train", "val", "test"}
    for split, stats in out.items():
        assert list(stats)[: len(STATS_KEYS)] == list(STATS_KEYS)
        assert stats == card["stats"][split]
    assert out["all"]["items"] == sum(out[s]["items"] for s in ("train", "val", "test"))
    assert main([str(demo)]) == 0
    assert "[train]" in capsys.readouterr().out
