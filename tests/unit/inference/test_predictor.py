"""``ser_lightning.inference.predictor`` and ``ser-predict``'s main with tiny models built in Python (no checkpoint)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from transformers import AutoTokenizer

from ser_lightning.cli import predict
from ser_lightning.inference import InputError, Item, Predictor, find_inputs, predictor
from ser_lightning.models import AmbER2, WavLMMultitask
from ser_lightning.nn import AudioEncoder, MelEncoder, TextEncoder, tiny_audio_config, tiny_text_config
from ser_lightning.nn.text import minilm_path

RATE = 16000


def _clip(seconds: float, seed: int, rate: int = RATE) -> np.ndarray:
    """Noise under a tone, in [-0.5, 0.5]: loud enough for ser-prepare's silence rule."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * (200 + 50 * seed) * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def _wav(path: Path, audio: np.ndarray, rate: int = RATE, transcript: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, audio, rate, subtype="FLOAT" if path.suffix == ".wav" else None)
    if transcript is not None:
        path.with_suffix(".txt").write_text(transcript + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def amber2() -> AmbER2:
    torch.manual_seed(0)
    text = TextEncoder(model=None, config=tiny_text_config(), tokenizer="minilm", freeze=False)
    model = AmbER2(MelEncoder(n_mels=16, hidden_dim=16, num_layers=2), text, num_classes=4, classes=list("abcd"))
    return model.eval()


@pytest.fixture(scope="module")
def wavlm() -> WavLMMultitask:
    torch.manual_seed(0)
    return WavLMMultitask(AudioEncoder(config=tiny_audio_config("wavlm"), freeze="none"), num_classes=4).eval()


def _reference(model: AmbER2, audio: np.ndarray, transcript: str) -> dict[str, list[float]]:
    """The heads' distributions for one clip, batch built by hand (no Collate, no predictor)."""
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_path()))
    tokens = tokenizer([transcript], return_tensors="pt", truncation=True, max_length=64)
    batch = {
        "audio": torch.from_numpy(audio)[None],
        "audio_mask": torch.ones(1, len(audio), dtype=torch.long),
        "text_input_ids": tokens["input_ids"],
        "text_attention_mask": tokens["attention_mask"],
    }
    with torch.no_grad():
        return {k: v.softmax(-1)[0].tolist() for k, v in model.head_logits(batch).items()}


# ---------------------------------------------------------------- inputs


def test_find_inputs_folders_files_manifests_and_sidecars(tmp_path):
    _wav(tmp_path / "rec" / "b.wav", _clip(0.5, 1), transcript="bee")
    _wav(tmp_path / "rec" / "sub" / "a.flac", _clip(0.5, 2))
    (tmp_path / "rec" / "notes.md").write_text("not audio")
    direct = _wav(tmp_path / "one.wav", _clip(0.5, 3), transcript="one")
    manifest = tmp_path / "list.csv"
    manifest.write_text("path,id,transcript\nrec/b.wav,bee-id,from the manifest\none.wav,,\n", encoding="utf-8")
    items = find_inputs([tmp_path / "rec", direct, manifest])
    assert [i.id for i in items] == ["b", "sub/a", "one", "bee-id", "one"]
    assert [i.transcript for i in items] == ["bee", None, "one", "from the manifest", "one"]  # column, else sidecar
    assert items[3].path == str(tmp_path / "rec" / "b.wav")
    with pytest.raises(InputError, match="no such file"):
        find_inputs([tmp_path / "nowhere.wav"])
    bad = tmp_path / "bad.csv"
    bad.write_text("file\nx.wav\n")
    with pytest.raises(InputError, match="'path' column"):
        find_inputs([bad])


# ---------------------------------------------------------------- predictions


def test_rows_match_a_hand_built_batch_in_input_order_with_experts(tmp_path, amber2):
    clips = [_clip(s, i) for i, s in enumerate((1.2, 0.4, 0.9, 0.6, 1.5))]
    texts = ["happy words", "a sad day", "neutral", "angry now", "well"]
    paths = [_wav(tmp_path / f"c{i}.wav", c, transcript=t) for i, (c, t) in enumerate(zip(clips, texts, strict=True))]
    rows = Predictor(amber2, device="cpu", batch_size=2).predict(paths)
    assert [r["id"] for r in rows] == [f"c{i}" for i in range(5)]
    for row, clip, text in zip(rows, clips, texts, strict=True):
        ref = _reference(amber2, clip, text)
        np.testing.assert_allclose(row["probabilities"], ref["fusion"], atol=1e-5)
        for head in ("audio", "text", "fusion"):
            np.testing.assert_allclose(row["experts"][head], ref[head], atol=1e-5)
        p = np.asarray(ref["fusion"])
        assert row["entropy"] == pytest.approx(float(-(p * np.log(p)).sum()), abs=1e-5)
        assert row["top"] == "abcd"[int(p.argmax())]
        assert row["classes"] == list("abcd")


def test_arrays_stereo_and_other_rates_go_through_the_files_path(tmp_path, wavlm):
    clip = _clip(1.0, 4)
    pred = Predictor(wavlm, device="cpu")
    from_file = pred.predict(_wav(tmp_path / "m.wav", clip))[0]
    from_array = pred.predict(clip, sample_rate=RATE)[0]
    assert from_array["id"] == "array0"
    assert from_array["path"] is None
    np.testing.assert_allclose(from_array["probabilities"], from_file["probabilities"], atol=1e-6)
    hi = _clip(1.0, 4, rate=44100)
    stereo = np.stack([hi, hi], axis=1)
    row = pred.predict(_wav(tmp_path / "s.wav", stereo, 44100))[0]
    ref = pred.predict(_wav(tmp_path / "hi.wav", hi, 44100))[0]
    np.testing.assert_allclose(row["probabilities"], ref["probabilities"], atol=1e-6)
    assert "experts" not in row  # no head_logits: no experts


def test_crop_seconds_of_the_checkpoint_crops_centered(wavlm):
    clip = _clip(2.0, 5)
    cropped = Predictor(wavlm, {"data": {"crop_seconds": 1.0}}, device="cpu").predict(clip, sample_rate=RATE)[0]
    middle = Predictor(wavlm, device="cpu").predict(clip[8000:24000], sample_rate=RATE)[0]
    np.testing.assert_allclose(cropped["probabilities"], middle["probabilities"], atol=1e-6)


def test_rejected_inputs_keep_their_place_and_reason(tmp_path, wavlm):
    good = _wav(tmp_path / "good.wav", _clip(0.8, 6))
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF not really a wave file" * 4)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), RATE)
    short = _wav(tmp_path / "short.wav", _clip(0.1, 7))
    silent = _wav(tmp_path / "silent.wav", np.zeros(RATE, dtype=np.float32))
    nan = np.full(RATE, np.nan, dtype=np.float32)
    rows = Predictor(wavlm, device="cpu").predict([corrupt, good, empty, short, silent, nan], sample_rate=RATE)
    reasons = [r.get("rejected") for r in rows]
    assert reasons[1] is None
    assert "probabilities" in rows[1]
    assert "does not decode" in reasons[0]
    assert reasons[2] == "empty audio"
    assert reasons[3].startswith("too short")
    assert reasons[4].startswith("silent")
    assert reasons[5] == "non-finite samples"


def test_a_text_model_needs_every_transcript(tmp_path, amber2):
    with_text = _wav(tmp_path / "t.wav", _clip(0.5, 8), transcript="hi")
    without = _wav(tmp_path / "n.wav", _clip(0.5, 9))
    pred = Predictor(amber2, device="cpu")
    with pytest.raises(InputError, match="n.wav"):
        pred.predict([with_text, without])
    assert pred.predict([without], transcripts=["given here"])[0]["id"] == "n"
    assert pred.missing_transcripts([Item("x", "x.wav")]) == ["x.wav"]


# ---------------------------------------------------------------- ser-predict main (model from Python)


@pytest.fixture
def patched(monkeypatch, wavlm):
    def load(ckpt, backbone=None, device="auto"):
        return Predictor(wavlm, None, device)

    monkeypatch.setattr(predictor, "load_model", load)
    return wavlm


def test_main_writes_csv_rejected_file_and_exit_codes(tmp_path, patched, capsys):
    ckpt = tmp_path / "m.ckpt"
    ckpt.write_bytes(b"x")
    _wav(tmp_path / "in" / "a.wav", _clip(0.7, 1))
    (tmp_path / "in" / "b.wav").write_bytes(b"broken")
    out = tmp_path / "out" / "p.csv"
    assert predict.main(["--ckpt", str(ckpt), "--out", str(out), "--no-progress", str(tmp_path / "in")]) == 0
    with out.open(newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["id", "path", "top", "entropy", *(f"prob_class{i}" for i in range(4))]
    assert [r[0] for r in rows[1:]] == ["a"]
    rejected = [json.loads(x) for x in (tmp_path / "out" / "p.rejected.jsonl").read_text().splitlines()]
    assert rejected[0]["path"].endswith("b.wav")
    assert "does not decode" in rejected[0]["reason"]
    assert "1 of 2 files predicted" in capsys.readouterr().out
    args = ["--ckpt", str(ckpt), "--out", str(tmp_path / "none.jsonl"), "--no-progress"]
    assert predict.main([*args, str(tmp_path / "in" / "b.wav")]) == 1
    assert predict.main([*args, str(tmp_path / "missing.wav")]) == 2
    assert predict.main([*args, "--batch-size", "0", str(tmp_path / "in")]) == 2
    assert predict.main(["--out", "x.jsonl", str(tmp_path / "in")]) == 2  # --ckpt is required


def test_importing_ser_lightning_stays_light():
    code = "import sys, ser_lightning; print(sorted(m for m in ('torch', 'lightning', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    code = (
        "import ser_lightning as s\nfrom ser_lightning.cli import predictor\n"
        "print(s.load_model is predictor.load_model)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"
