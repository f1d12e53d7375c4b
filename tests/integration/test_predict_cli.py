"""``ser-predict`` and ``ser_lightning.load_model`` on WAV files decoded from the demo's test shard.

A short demo fit (configs/demo.yaml + the overlays of its header) gives the checkpoint; ``train.py predict`` on the
shards with that checkpoint is the reference the raw-audio predictions must match.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from cli_fixtures import TINY_DEMO
from qwen2_fixtures import tiny_qwen2_audio_dir  # noqa: F401 (the session fixture)

import ser_lightning
from ser_lightning.cli.predict import main as ser_predict
from ser_lightning.cli.train import main as train
from ser_lightning.data.audio_io import resample

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SHARDS = ROOT / "shards" / "demo"
DEMO = [*TINY_DEMO, "--data.shards", str(SHARDS)]
CLIPS = 10  # test clips decoded to WAV files


def _test_clips(count: int = CLIPS) -> list[tuple[str, np.ndarray, str]]:
    """``(id, int16 samples, transcript)`` of the first test clips, bit-exact from the shard's FLAC."""
    members: dict[str, dict[str, bytes]] = {}
    with tarfile.open(SHARDS / "test-000000.tar") as tar:
        for info in tar:
            key, _, ext = info.name.rpartition(".")
            members.setdefault(key, {})[ext] = tar.extractfile(info).read()
    clips = []
    for key in sorted(members)[:count]:
        meta = json.loads(members[key]["json"])
        audio, rate = sf.read(io.BytesIO(members[key]["flac"]), dtype="int16")
        assert rate == 16000
        clips.append((meta["id"], audio, meta["transcript"]))
    return clips


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict:
    """A 2-batch demo fit, ``train.py predict`` on the test shard with its checkpoint, the clips as WAV files."""
    root = tmp_path_factory.mktemp("predict")
    runs = ["--trainer.logger.init_args.save_dir", str(root / "runs"), "--trainer.default_root_dir", str(root)]
    train(["fit", *DEMO, *runs, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
           "--test_after_fit", "false"])  # fmt: skip
    ckpt = next((root / "runs").rglob("last.ckpt"))
    reference = root / "reference.jsonl"
    train(["predict", *DEMO, *runs, "--ckpt_path", str(ckpt), "--trainer.limit_predict_batches", "1.0",
           "--predictions.output_path", str(reference)])  # fmt: skip
    rows = [json.loads(line) for line in reference.read_text().splitlines()]
    clips = _test_clips()
    wav = root / "wav"
    wav.mkdir()
    for uid, audio, transcript in clips:
        sf.write(wav / f"{uid}.wav", audio, 16000, subtype="PCM_16")
        (wav / f"{uid}.txt").write_text(transcript + "\n", encoding="utf-8")
    return {"root": root, "ckpt": ckpt, "reference": {r["id"]: r for r in rows}, "clips": clips, "wav": wav}


def _run(demo: dict, out: Path, *paths: Path | str, extra: tuple[str, ...] = ()) -> int:
    args = ["--ckpt", str(demo["ckpt"]), "--out", str(out), "--batch-size", "3", "--device", "cpu", *extra]
    return ser_predict([*args, *map(str, paths)])


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _assert_reference(demo: dict, rows: list[dict], ids: list[str]) -> None:
    assert [r["id"] for r in rows] == ids  # input order
    for row in rows:
        ref = demo["reference"][row["id"]]
        assert row["classes"] == ref["classes"]
        np.testing.assert_allclose(row["probabilities"], ref["probabilities"], atol=1e-5, rtol=0)
        assert row["entropy"] == pytest.approx(ref["entropy"], abs=1e-5)
        assert row["top"] == ref["classes"][int(np.argmax(ref["probabilities"]))]
        assert set(row["experts"]) == {"audio", "text", "fusion"}
        np.testing.assert_allclose(row["experts"]["fusion"], ref["probabilities"], atol=1e-5)  # the student


def test_a_folder_with_sidecars_matches_train_predict_on_the_shards(demo, tmp_path, capsys):
    out = tmp_path / "predictions.jsonl"
    assert _run(demo, out, demo["wav"]) == 0
    _assert_reference(demo, _rows(out), sorted(uid for uid, _, _ in demo["clips"]))
    assert _rows(tmp_path / "predictions.rejected.jsonl") == []
    assert f"{CLIPS} of {CLIPS} files predicted" in capsys.readouterr().out


def test_a_manifest_with_transcripts_keeps_its_order_and_ids(demo, tmp_path):
    bare = tmp_path / "bare"  # no sidecars: the transcripts come from the manifest
    bare.mkdir()
    order = list(reversed(demo["clips"]))
    with (tmp_path / "list.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "id", "transcript"])
        for uid, audio, transcript in order:
            sf.write(bare / f"{uid}.wav", audio, 16000, subtype="PCM_16")
            writer.writerow([f"bare/{uid}.wav", uid, transcript])
    out = tmp_path / "p.jsonl"
    assert _run(demo, out, tmp_path / "list.csv") == 0
    _assert_reference(demo, _rows(out), [uid for uid, _, _ in order])
    # the same files without transcripts: exit 2 before any work, naming the files
    assert _run(demo, tmp_path / "none.jsonl", bare) == 2
    assert not (tmp_path / "none.jsonl").exists()


def test_missing_transcripts_name_the_files(demo, tmp_path, capsys):
    uid, audio, _ = demo["clips"][0]
    sf.write(tmp_path / "lonely.wav", audio, 16000, subtype="PCM_16")
    assert _run(demo, tmp_path / "p.jsonl", demo["wav"], tmp_path / "lonely.wav") == 2
    err = capsys.readouterr().err
    assert "1 of 11 files have none" in err
    assert str(tmp_path / "lonely.wav") in err
    assert not (tmp_path / "p.jsonl").exists()


def test_stereo_44k_corrupt_and_empty_files(demo, tmp_path):
    uid, audio, transcript = demo["clips"][1]
    folder = tmp_path / "mixed"
    folder.mkdir()
    mono = audio.astype(np.float32) / 32768.0
    hi = resample(mono, 16000, 44100)
    sf.write(folder / "hi.wav", np.stack([hi, hi], axis=1), 44100, subtype="FLOAT")
    sf.write(folder / "lo.wav", audio, 16000, subtype="PCM_16")
    (folder / "broken.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk" * 3)
    sf.write(folder / "empty.wav", np.zeros(0, dtype=np.int16), 16000, subtype="PCM_16")
    for name in ("hi", "lo", "broken", "empty"):
        (folder / f"{name}.txt").write_text(transcript)
    out = tmp_path / "out.csv"
    assert _run(demo, out, folder) == 0
    with out.open(newline="") as handle:
        table = list(csv.DictReader(handle))
    classes = demo["reference"][uid]["classes"]
    assert list(table[0]) == ["id", "path", "top", "entropy", *(f"prob_{c}" for c in classes)]
    assert [r["id"] for r in table] == ["hi", "lo"]
    probs = [[float(r[f"prob_{c}"]) for c in classes] for r in table]
    np.testing.assert_allclose(probs[1], demo["reference"][uid]["probabilities"], atol=1e-5)
    np.testing.assert_allclose(probs[0], probs[1], atol=5e-4)  # same clip, 44.1 kHz stereo (clips differ ~1e-2)
    rejected = {Path(r["path"]).name: r["reason"] for r in _rows(tmp_path / "out.rejected.jsonl")}
    assert set(rejected) == {"broken.wav", "empty.wav"}
    assert rejected["broken.wav"].startswith("audio does not decode")
    assert rejected["empty.wav"] == "empty audio"
    # nothing usable: exit 1, the rejections still written
    assert _run(demo, tmp_path / "bad.jsonl", folder / "broken.wav", folder / "empty.wav") == 1
    assert len(_rows(tmp_path / "bad.rejected.jsonl")) == 2


def test_python_api_with_arrays(demo):
    predictor = ser_lightning.load_model(demo["ckpt"], device="cpu")
    ids = [uid for uid, _, _ in demo["clips"][:4]]
    arrays = [audio.astype(np.float32) / 32768.0 for _, audio, _ in demo["clips"][:4]]
    rows = predictor.predict(arrays, transcripts=[t for _, _, t in demo["clips"][:4]], sample_rate=16000)
    assert [r["id"] for r in rows] == ["array0", "array1", "array2", "array3"]
    for row, uid in zip(rows, ids, strict=True):
        np.testing.assert_allclose(row["probabilities"], demo["reference"][uid]["probabilities"], atol=1e-5)
    files = predictor.predict([demo["wav"] / f"{uid}.wav" for uid in ids])  # paths, transcripts from sidecars
    assert [r["id"] for r in files] == ids
    np.testing.assert_allclose([r["probabilities"] for r in files], [r["probabilities"] for r in rows], atol=1e-6)


def test_qwen2_audio_adapters_with_a_moved_backbone(tmp_path, tiny_qwen2_audio_dir):  # noqa: F811
    """A checkpoint of adapters + head predicts raw files with ``--backbone`` naming where the base lives now."""
    configs = ["configs/qwen2_audio_lora.yaml", "configs/debug/tiny_qwen2_audio.yaml"]
    args = [
        *[arg for c in configs for arg in ("--config", str(ROOT / c))],
        "--model.init_args.random_config=null",
        f"--data.shards={SHARDS}",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--trainer.logger.init_args.name=qwen",
    ]
    train(["fit", *args, f"--model.init_args.backbone={tiny_qwen2_audio_dir}", "--trainer.limit_train_batches=1",
           "--trainer.limit_val_batches=1"])  # fmt: skip
    ckpt = next(tmp_path.rglob("last.ckpt"))
    reference = tmp_path / "reference.jsonl"
    train(["predict", *args, f"--model.init_args.backbone={tiny_qwen2_audio_dir}", f"--ckpt_path={ckpt}",
           "--trainer.limit_predict_batches=1", f"--predictions.output_path={reference}"])  # fmt: skip
    expected = {r["id"]: r for r in _rows(reference)}
    moved = tmp_path / "moved_base"
    shutil.copytree(tiny_qwen2_audio_dir, moved)
    clips = [c for c in _test_clips(200) if c[0] in expected][:3]
    with (tmp_path / "list.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)  # the prompt names transcript and speaker: the manifest gives both
        writer.writerow(["path", "transcript", "speaker"])
        for uid, audio, transcript in clips:
            sf.write(tmp_path / f"{uid}.wav", audio, 16000, subtype="PCM_16")
            writer.writerow([f"{uid}.wav", transcript, uid.split("_")[0]])
    out = tmp_path / "p.jsonl"
    assert ser_predict(["--ckpt", str(ckpt), "--out", str(out), "--backbone", str(moved), "--device", "cpu",
                        str(tmp_path / "list.csv")]) == 0  # fmt: skip
    rows = _rows(out)
    assert [r["id"] for r in rows] == [uid for uid, _, _ in clips]
    for row in rows:
        np.testing.assert_allclose(row["probabilities"], expected[row["id"]]["probabilities"], atol=1e-5)
        assert "experts" not in row
