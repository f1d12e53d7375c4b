"""``ser-prepare`` end to end: flags -> reader keywords, out-dir safety, manifest and CREMA-D runs."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ser_lightning.cli.prepare import main
from ser_lightning.corpora.crema_d import VOTE_COLUMNS
from ser_lightning.corpora.record import ReadReport, UtteranceRecord
from ser_lightning.data.shards.card import iter_shard_meta, read_card, shard_dir_statistics
from ser_lightning.stats import STATS_KEYS, vote_statistics

pytestmark = pytest.mark.integration


def noise_wav(path: Path, seconds: float = 0.5, rate: int = 8000, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    sf.write(path, (0.1 * rng.standard_normal(int(seconds * rate))).astype(np.float32), rate)
    return path


def fake_reader(calls: list, tmp_path: Path, classes: tuple[str, ...]):
    """A reader standing in for a corpus: records its arguments, returns one record."""
    audio = noise_wav(tmp_path / "fake.wav")

    def read(*args, **kwargs):
        calls.append((args, kwargs))
        votes = {"primary": np.ones(len(classes))}
        record = UtteranceRecord("fake", "fake", "train", audio, "", "", classes, votes)
        report = ReadReport(skipped={"gone": "no votes"})
        report.ignored_labels["Frustration"] += 2
        report.notes["secondary_outside_class_set"] += 1
        return [record], report

    return read


@pytest.mark.parametrize(
    ("module", "function", "argv", "expected_args", "expected_kwargs"),
    [
        (
            "iemocap",
            "read_iemocap",
            ["iemocap", "--classes", "iemocap4x", "--self-ratings", "--split", "session"]
            + ["--test-session", "5", "--val-session", "4", "--seed", "3", "--ratios", "0.6,0.2,0.2"],
            ("ROOT",),
            {
                "classes": "iemocap4x",
                "self_ratings": True,
                "split": "session",
                "seed": 3,
                "ratios": (0.6, 0.2, 0.2),
                "test_session": 5,
                "val_session": 4,
            },
        ),
        ("iemocap", "read_iemocap", ["iemocap"], ("ROOT",), {"self_ratings": False}),
        (
            "msp_podcast",
            "read_msp_podcast",
            ["msp-podcast", "--classes", "msp9", "--split", "folds", "--folds", "4", "--fold", "2"]
            + ["--seed", "1", "--merged-weights", "0.9", "0.1"],
            ("ROOT",),
            {"classes": "msp9", "split": "folds", "folds": 4, "fold": 2, "seed": 1, "merged_weights": (0.9, 0.1)},
        ),
        (
            "crema_d",
            "read_crema_d",
            ["crema-d", "--seed", "7", "--ratios", "0.5,0.25,0.25", "--modality", "av"],
            ("ROOT",),
            {"seed": 7, "ratios": (0.5, 0.25, 0.25), "modality": "av"},
        ),
        (
            "manifest",
            "read_manifest",
            ["manifest", "--manifest", "m.csv", "--classes", "A,B,C", "--split", "random", "--seed", "2"],
            ("MANIFEST", "A,B,C"),
            {"split": "random", "seed": 2},
        ),
    ],
)
def test_flags_map_to_reader_keywords(tmp_path, monkeypatch, module, function, argv, expected_args, expected_kwargs):
    import importlib

    calls: list = []
    classes = ("A", "B", "C")
    monkeypatch.setattr(
        importlib.import_module(f"ser_lightning.corpora.{module}"), function, fake_reader(calls, tmp_path, classes)
    )
    out = tmp_path / "out"
    common = ["--out", str(out), "--no-progress"]
    common += ["--root", str(tmp_path)] if module != "manifest" else []
    assert main(argv + common) == 0
    ((args, kwargs),) = calls
    placeholders = {"ROOT": tmp_path, "MANIFEST": Path("m.csv")}
    assert args == tuple(placeholders.get(a, a) for a in expected_args)
    assert kwargs == expected_kwargs
    card = read_card(out)
    assert card["num_samples"] == {"train": 1}
    assert card["rejected"] == 1  # the reader's skip is counted
    # and what the reader counted without rejecting is kept with the data
    assert card["reader"] == {
        "skipped": 1,
        "ignored_labels": {"Frustration": 2},
        "notes": {"secondary_outside_class_set": 1},
        "out_of_set_votes": None,
        "dropped_votes": {},
        "utterances_with_dropped_votes": 0,
    }


def test_usage_errors_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        main(["manifest", "--manifest", "m.csv", "--classes", "nosuchset", "--out", str(tmp_path / "o")])
    assert err.value.code == 2
    assert "unknown class set 'nosuchset'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["crema-d", "--root", str(tmp_path), "--out", str(tmp_path / "o"), "--ratios", "0.5,x"])
    with pytest.raises(SystemExit):
        main(["crema-d", "--root", str(tmp_path), "--out", str(tmp_path / "o"), "--workers", "0"])


def test_refuses_nonempty_out_without_card_before_reading(tmp_path, caplog):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("user data")
    # the corpus root does not exist: the out-dir check comes first and names the directory
    assert main(["crema-d", "--root", str(tmp_path / "nowhere"), "--out", str(out), "--no-progress"]) == 1
    assert "holds no card.json" in caplog.text
    assert [p.name for p in out.iterdir()] == ["precious.txt"]


def test_reader_error_is_reported_not_raised(tmp_path, caplog):
    (tmp_path / "processedResults").mkdir()
    (tmp_path / "processedResults" / "tabulatedVotes.csv").write_text("a,b\n1,2\n")
    assert main(["crema-d", "--root", str(tmp_path), "--out", str(tmp_path / "out"), "--no-progress"]) == 1
    assert "tabulatedVotes.csv:1: not a CREMA-D tabulatedVotes.csv header" in caplog.text


def test_manifest_end_to_end_with_overwrite(tmp_path, caplog):
    caplog.set_level("INFO")
    rows = [("a", "train", 3, 0, 1), ("b", "train", 1, 1, 1), ("c", "val", 0, 2, 2), ("d", "test", 0, 0, 4)]
    for i, (name, *_) in enumerate(rows):
        noise_wav(tmp_path / f"{name}.wav", rate=(8000, 22050)[i % 2], seed=i)
    noise_wav(tmp_path / "e.wav", seconds=0.1)  # too short
    with (tmp_path / "m.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["audio", "split", "Anger", "Happy", "Sad"])
        writer.writerows([(f"{n}.wav", s, *v) for n, s, *v in rows])
        writer.writerow(["e.wav", "test", 1, 0, 0])
        writer.writerow(["missing.wav", "train", 1, 0, 0])
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    argv = ["manifest", "--manifest", str(tmp_path / "m.csv"), "--classes", "Anger,Happy,Sad", "--out", str(out)]
    assert main([*argv, "--no-progress"]) == 1  # non-empty, no card
    assert main([*argv, "--no-progress", "--overwrite", "--maxcount", "1", "--workers", "2"]) == 0
    card = read_card(out)
    assert card["classes"] == ["Anger", "Happy", "Sad"]
    assert card["num_samples"] == {"train": 2, "val": 1, "test": 1}
    assert card["shards"]["train"] == ["train-000000.tar", "train-000001.tar"]
    assert card["rejected"] == 2
    rejected = {json.loads(x)["id"]: json.loads(x)["reason"] for x in (out / "rejected.jsonl").open()}
    assert rejected["e"].startswith("too short")
    assert set(rejected) == {"e", "missing"}
    assert (out / "keep.txt").read_text() == "mine"
    expected = vote_statistics([v for _, _, *v in rows], ["Anger", "Happy", "Sad"])
    assert shard_dir_statistics(out)["all"]["fleiss_kappa"] == pytest.approx(expected["fleiss_kappa"])
    assert "train  kept      2, rejected     0" in caplog.text
    assert "test   kept      1, rejected     1 (too short: 1)" in caplog.text
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main([*argv, "--no-progress", "--maxcount", "1"]) == 0  # a shard dir: rerun in place, same bytes
    assert before == {p.name: p.read_bytes() for p in out.iterdir()}


def _crema_rows(votes_csv: Path, stride: int = 25) -> tuple[list[str], list[list[str]]]:
    """Every ``stride``-th voice row of the real table (a few hundred, spread over all actors)."""
    with votes_csv.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader)
        voice = [row for row in reader if row and int(row[0]) // 100000 == 1]
    return header, voice[::stride]


def test_crema_d_end_to_end_matches_vote_statistics(tmp_path, crema_d_votes_path, caplog):
    caplog.set_level("INFO")
    header, rows = _crema_rows(crema_d_votes_path)
    assert 250 <= len(rows) <= 400
    (tmp_path / "processedResults").mkdir()
    with (tmp_path / "processedResults" / "tabulatedVotes.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, quoting=csv.QUOTE_NONNUMERIC)
        writer.writerow(header)
        writer.writerows(rows)
    for extra in ("VideoDemographics.csv", "SentenceFilenames.csv"):
        if (crema_d_votes_path.parent / extra).is_file():
            shutil.copy(crema_d_votes_path.parent / extra, tmp_path / extra)
    col = {h: i for i, h in enumerate(header)}
    names = [row[col["fileName"]] for row in rows]
    (tmp_path / "AudioWAV").mkdir()
    for i, name in enumerate(names):
        noise_wav(tmp_path / "AudioWAV" / f"{name}.wav", seed=i)
    broken = names[17]
    (tmp_path / "AudioWAV" / f"{broken}.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt broken")
    out = tmp_path / "shards"
    argv = ["crema-d", "--root", str(tmp_path), "--out", str(out), "--no-progress", "--maxcount", "100"]
    assert main(argv) == 0

    rejected = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]
    assert [(r["id"], Path(r["path"]).name) for r in rejected] == [(broken, f"{broken}.wav")]
    assert rejected[0]["reason"].startswith("audio does not decode")
    kept_rows = [row for row in rows if row[col["fileName"]] != broken]
    counts = np.array([[float(row[col[c]]) for c in VOTE_COLUMNS] for row in kept_rows])
    card = read_card(out)
    assert card["classes"] == ["Anger", "Disgust", "Fear", "Happy", "Neutral", "Sad"]
    assert card["rejected"] == 1
    assert sum(card["num_samples"].values()) == len(kept_rows)
    assert set(card["num_samples"]) == {"train", "val", "test"}
    expected = vote_statistics(counts, card["classes"])
    assert card["stats"]["all"]["fleiss_kappa"] == pytest.approx(expected["fleiss_kappa"], rel=1e-12)
    assert card["stats"]["all"]["entropy_mean"] == pytest.approx(expected["entropy_mean"], rel=1e-12)
    for key in STATS_KEYS:
        assert card["stats"]["all"][key] == pytest.approx(expected[key], rel=1e-12)

    by_name = dict(zip([row[col["fileName"]] for row in kept_rows], counts.tolist(), strict=True))
    metas = list(iter_shard_meta(out))
    assert sorted(m["id"] for m in metas) == sorted(by_name)
    for meta in metas:
        assert meta["votes"]["primary"] == by_name[meta["id"]]
        assert meta["corpus"] == "crema-d"
        assert meta["duration"] == pytest.approx(0.5)
    speakers = {s: {m["speaker"] for m in metas if m["split"] == s} for s in card["num_samples"]}
    assert not (speakers["train"] & speakers["test"])  # actor-disjoint splits survive the writer
    assert "rejected" in caplog.text


# --------------------------------------------------------------------------------------------
# Issue 15: no silent label loss or silent audio at preparation
# --------------------------------------------------------------------------------------------


def _rejected(out: Path) -> dict[str, str]:
    return {json.loads(x)["id"]: json.loads(x)["reason"] for x in (out / "rejected.jsonl").open()}


def test_vote_column_outside_classes_rejects_row_unless_dropping_is_asked(tmp_path, caplog):
    """Surprise 9 + Neutral 1 with --classes Angry,Happy,Sad,Neutral must not become a 100 % Neutral target."""
    noise_wav(tmp_path / "a.wav")
    noise_wav(tmp_path / "b.wav", seed=1)
    (tmp_path / "m.csv").write_text(
        "audio,split,Angry,Happy,Sad,Neutral,Surprise\na.wav,train,0,0,0,1,9\nb.wav,train,2,1,0,0,0\n"
    )
    argv = ["manifest", "--manifest", str(tmp_path / "m.csv"), "--classes", "Angry,Happy,Sad,Neutral", "--no-progress"]
    out = tmp_path / "out"
    assert main([*argv, "--out", str(out)]) == 0
    assert _rejected(out)["a"].startswith("votes outside class set custom: Surprise=9 (pass --drop-out-of-set-votes")
    assert [m["id"] for m in iter_shard_meta(out)] == ["b"]
    card = read_card(out)
    assert card["reader"]["out_of_set_votes"] == "reject"
    assert card["reader"]["dropped_votes"] == {}
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("1 utterances rejected for votes outside the class set" in m for m in warned)

    caplog.clear()
    dropped = tmp_path / "dropped"
    assert main([*argv, "--out", str(dropped), "--drop-out-of-set-votes"]) == 0
    metas = {m["id"]: m for m in iter_shard_meta(dropped)}
    assert metas["a"]["votes"]["primary"] == [0.0, 0.0, 0.0, 1.0]  # the user asked for it, and it is counted:
    card = read_card(dropped)
    assert card["reader"]["out_of_set_votes"] == "drop"
    assert card["reader"]["dropped_votes"] == {"Surprise": 9.0}
    assert card["reader"]["utterances_with_dropped_votes"] == 1
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("1 kept utterances lost votes outside the class set" in m and "Surprise" in m for m in warned)


def test_msp_podcast_flag_reaches_the_reader(tmp_path, monkeypatch):
    import ser_lightning.corpora.msp_podcast as msp

    calls: list = []
    monkeypatch.setattr(msp, "read_msp_podcast", fake_reader(calls, tmp_path, ("A", "B", "C")))
    argv = ["msp-podcast", "--root", str(tmp_path), "--out", str(tmp_path / "o"), "--no-progress"]
    assert main([*argv, "--drop-out-of-set-votes"]) == 0
    assert calls[0][1] == {"drop_out_of_set_votes": True}


def _wav(path: Path, audio: np.ndarray, rate: int = 16000, subtype: str = "FLOAT") -> Path:
    sf.write(path, audio.astype(np.float32), rate, subtype=subtype)
    return path


def test_silent_clipped_and_long_audio(tmp_path, caplog):
    rng = np.random.default_rng(0)
    _wav(tmp_path / "ok.wav", 0.1 * rng.standard_normal(8000))
    _wav(tmp_path / "zeros.wav", np.zeros(8000))
    _wav(tmp_path / "hiss.wav", 5e-5 * np.sign(rng.standard_normal(8000)))  # peak 5e-5 < 1e-4: silent
    _wav(tmp_path / "loud.wav", 3.0 * rng.standard_normal(8000))  # float audio far past full scale
    _wav(tmp_path / "long.wav", 0.1 * rng.standard_normal(16000 * 3))  # 3 s > --max-duration 2
    names = ("ok", "zeros", "hiss", "loud", "long")
    (tmp_path / "m.csv").write_text("audio,split,A,B\n" + "".join(f"{n}.wav,train,1,1\n" for n in names))
    base = ["manifest", "--manifest", str(tmp_path / "m.csv"), "--classes", "A,B", "--no-progress"]
    out = tmp_path / "out"
    assert main([*base, "--out", str(out), "--max-duration", "2"]) == 0
    rejected = _rejected(out)
    assert set(rejected) == {"zeros", "hiss"}
    assert rejected["zeros"] == "silent: peak 0.00e+00 < 0.0001 full scale"
    assert rejected["hiss"].startswith("silent: peak 5.00e-05")
    assert sorted(m["id"] for m in iter_shard_meta(out)) == ["long", "loud", "ok"]
    checks = read_card(out)["audio_checks"]
    loud_clipped = int(np.count_nonzero(np.abs(sf.read(tmp_path / "loud.wav", dtype="float32")[0]) > 1.0))
    assert checks == {
        "silence_threshold": 1e-4,
        "max_duration": 2.0,
        "reject_over_max_duration": False,
        "clipped_utterances": 1,
        "clipped_samples": loud_clipped,
        "long_utterances": 1,
    }
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(f"1 kept utterances had {loud_clipped} samples outside [-1, 1]" in m and "loud" in m for m in warned)
    assert any("1 kept utterances are longer than --max-duration 2 s: long" in m for m in warned)

    strict = tmp_path / "strict"
    argv = [*base, "--out", str(strict), "--max-duration", "2", "--reject-over-max-duration"]
    assert main([*argv, "--silence-threshold", "0"]) == 0
    assert _rejected(strict) == {"long": "too long: 3.0 s > 2 s"}
    assert read_card(strict)["audio_checks"]["long_utterances"] == 0
    # the default cap (60 s) counts nothing here
    assert main([*base, "--out", str(tmp_path / "default")]) == 0
    assert read_card(tmp_path / "default")["audio_checks"]["max_duration"] == 60.0


def test_manifest_parse_errors_name_file_and_line_through_the_cli(tmp_path, caplog):
    noise_wav(tmp_path / "a.wav")
    (tmp_path / "m.jsonl").write_bytes(b'{"audio": "a.wav", "votes": [1, 0], "split": "train"}\n{"audio": "\xff"}\n')
    argv = ["manifest", "--manifest", str(tmp_path / "m.jsonl"), "--classes", "A,B", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "o")]) == 1
    assert "m.jsonl:2: not utf-8 text" in caplog.text
    (tmp_path / "m.jsonl").write_text('{"audio": "a.wav", "votes": [1, "x"], "split": "train"}\n')
    assert main([*argv, "--out", str(tmp_path / "o")]) == 1
    assert "m.jsonl:1: vote count is not a number: 'x'" in caplog.text
