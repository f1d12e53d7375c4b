"""The embedded demo corpus: espeak-ng speech acted in six emotions, with CREMA-D-like rater votes.

A fresh machine has no licensed corpus and no network; ``shards/demo/`` lets every recipe run end to end.
It is a demo, not a benchmark: the speech is formant synthesis (espeak-ng), the "acting" is a handful of
prosody settings, and the votes are drawn from aggregate statistics of CREMA-D's real voice-only raters
(:mod:`ser_lightning.data.demo_votes`), independently of what the audio sounds like.

Design (mirrors CREMA-D): the 12 CREMA-D sentences, each espeak voice a speaker, six intended emotions
(``ANG DIS FEA HAP NEU SAD``) at levels ``LO MD HI XX`` (``NEU`` at ``XX`` only). Per voice every
sentence is spoken neutrally and in each of the five other emotions at one level; the levels are dealt
so that each (voice, emotion) has three sentences at each level (72 clips per voice). Emotions change
pitch (``-p``), speed (``-s``), amplitude (``-a``) and pitch range (SSML ``<prosody range>``), scaled by
the level's strength; each voice has a seeded speaking style and each clip a seeded jitter. Every clip
gets 4-12 simulated raters whose votes follow a Dirichlet-multinomial fitted to the real raters of its
(emotion, level) cell. Speakers are split train/val/test by voice, stratified by the voice's gender.

Audio is 16 kHz mono, quantised to ``bits`` (12 by default: samples are multiples of 16/32768, peaks
below 0.5), which FLAC stores in about 60% of the space of full 16-bit samples.

Build (deterministic: the same espeak-ng version and seed give byte-identical shards)::

    python -m ser_lightning.data.demo build --out shards/demo --seed 0
"""

from __future__ import annotations

import argparse
import io
import json
import re
import shutil
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import numpy as np
import soundfile as sf
from tqdm.auto import tqdm

from ser_lightning.corpora.crema_d import SENTENCES
from ser_lightning.corpora.record import UtteranceRecord
from ser_lightning.corpora.splits import group_split
from ser_lightning.data import demo_votes
from ser_lightning.data.shards import write_shards
from ser_lightning.labels import votes_to_distribution

CORPUS = "demo"
CLASSES = demo_votes.CLASSES  # cremad6: Anger, Disgust, Fear, Happy, Neutral, Sad
EMOTIONS = demo_votes.EMOTIONS
LEVELS = demo_votes.LEVELS
SAMPLE_RATE = 16000
SPLIT_RATIOS = (0.75, 0.125, 0.125)  # of the voices of each gender: 16 default voices -> 12 / 2 / 2


# espeak-ng voices as speakers: eight accents, each once with a male and once with a female variant.
DEFAULT_VOICES: tuple[str, ...] = (
    "en-us+m1",
    "en+m2",
    "en-gb-scotland+m3",
    "en-029+m4",
    "en-us-nyc+m5",
    "en-gb-x-rp+m6",
    "en-gb-x-gbclan+m7",
    "en-gb-x-gbcwmd+m8",
    "en-us+f1",
    "en+f2",
    "en-gb-scotland+f3",
    "en-029+f4",
    "en-us-nyc+f5",
    "en-gb-x-rp+Andrea",
    "en-gb-x-gbclan+belinda",
    "en-gb-x-gbcwmd+steph",
)


@dataclass(frozen=True)
class Style:
    """Prosody offsets from espeak-ng's defaults.

    Attributes:
        pitch: added to ``-p`` (0-99, default 50).
        speed: relative change of ``-s`` (words per minute, default 175): ``175 * (1 + speed)``.
        gain_db: amplitude change in dB (``-a``).
        range: added to the SSML pitch range, in percent of the voice's default range.
    """

    pitch: float = 0.0
    speed: float = 0.0
    gain_db: float = 0.0
    range: float = 0.0


# Offsets at full strength (level HI); the level's strength scales them.
EMOTION_STYLES: dict[str, Style] = {
    "ANG": Style(pitch=8, speed=0.25, gain_db=6, range=70),  # loud, fast, wide range
    "DIS": Style(pitch=-12, speed=-0.25, gain_db=1, range=10),  # slow, low, normal loudness
    "FEA": Style(pitch=30, speed=0.35, gain_db=-2, range=-35),  # high, fast, narrow
    "HAP": Style(pitch=25, speed=0.10, gain_db=3, range=90),  # high, very wide range
    "NEU": Style(),
    "SAD": Style(pitch=-15, speed=-0.35, gain_db=-6, range=-65),  # low, slow, soft, flat
}
LEVEL_STRENGTH: dict[str, float] = {"LO": 0.35, "MD": 0.65, "HI": 1.0, "XX": 0.7}
SPEAKER_SD = Style(pitch=4, speed=0.06, gain_db=1.0, range=10)  # per-voice speaking style
CLIP_SD = Style(pitch=3, speed=0.04, gain_db=0.75, range=8)  # per-clip jitter
BASE_AMPLITUDE = 55  # -a of a neutral clip; espeak-ng clips its own output above about 120
OUTPUT_GAIN = 0.5  # after synthesis; keeps peaks below 0.5 so 16-bit conversions are exact
PEAK_LIMIT = 0.49


@dataclass(frozen=True)
class Prosody:
    """The espeak-ng settings of one clip.

    Attributes:
        pitch: ``-p`` (0-99).
        speed: ``-s`` in words per minute.
        amplitude: ``-a`` (0-200).
        range: SSML ``<prosody range="N%">``.
    """

    pitch: int
    speed: int
    amplitude: int
    range: int


@dataclass(frozen=True)
class Clip:
    """One planned demo utterance.

    Attributes:
        id: ``{voice}_{sentence}_{emotion}_{level}`` (CREMA-D's naming with the voice as actor).
        voice: espeak-ng voice (the speaker).
        sentence: CREMA-D sentence code.
        emotion: intended emotion code.
        level: intensity level code.
        split: ``train``, ``val`` or ``test``.
    """

    id: str
    voice: str
    sentence: str
    emotion: str
    level: str
    split: str


# --------------------------------------------------------------------------------------------
# espeak-ng
# --------------------------------------------------------------------------------------------


def _espeak() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng is not installed (Debian/Ubuntu: apt-get install espeak-ng)")
    return exe


def espeak_info() -> tuple[str, Path]:
    """The espeak-ng version string and its data directory.

    Raises:
        RuntimeError: espeak-ng is not installed or its version line is not understood.
    """
    out = subprocess.run([_espeak(), "--version"], capture_output=True, text=True, check=True).stdout
    found = re.search(r"text-to-speech:\s*(\S+)\s+.*Data at:\s*(.+)$", out.strip())
    if found is None:
        raise RuntimeError(f"unexpected `espeak-ng --version` output: {out!r}")
    return found.group(1), Path(found.group(2).strip())


def voice_gender(voice: str, data_dir: Path | None = None) -> str:
    """``male``, ``female`` or ``unknown``: the gender line of a voice's variant file (``lang+variant``).

    Raises:
        ValueError: the voice has a variant that espeak-ng does not have (espeak-ng would ignore it silently).
    """
    if "+" not in voice:
        return "unknown"
    variant = voice.split("+", 1)[1]
    data_dir = data_dir if data_dir is not None else espeak_info()[1]
    path = data_dir / "voices" / "!v" / variant
    if not path.is_file():
        raise ValueError(f"espeak-ng has no voice variant {variant!r} (looked for {path})")
    found = re.search(r"^\s*gender\s+(\w+)", path.read_text(encoding="utf-8", errors="replace"), re.MULTILINE)
    return found.group(1).lower() if found else "unknown"


def _resample(audio: np.ndarray, orig_freq: int, new_freq: int) -> np.ndarray:
    """``torchaudio.functional.resample`` on one thread (much faster for short clips, and the same bytes every run)."""
    import torch
    import torchaudio.functional as taf

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return taf.resample(torch.from_numpy(np.ascontiguousarray(audio)), orig_freq, new_freq).numpy()
    finally:
        torch.set_num_threads(before)


def synthesise(
    text: str, voice: str, prosody: Prosody, *, sample_rate: int = SAMPLE_RATE, bits: int = 12
) -> np.ndarray:
    """Speak ``text`` with espeak-ng and return float32 mono audio at ``sample_rate``.

    The audio is scaled by :data:`OUTPUT_GAIN`, limited to peaks of :data:`PEAK_LIMIT` and rounded to
    ``bits`` of resolution (multiples of ``2 ** (16 - bits) / 32768``), so it converts to 16-bit PCM exactly.

    Args:
        text: plain text (escaped for SSML here).
        voice: espeak-ng voice, e.g. ``en-us+m1``.
        prosody: the clip's settings.
        sample_rate: output rate in Hz (espeak-ng renders at 22,050 Hz).
        bits: resolution of the output samples, 8-16.

    Raises:
        RuntimeError: espeak-ng is missing, fails or returns no audio.
        ValueError: ``bits`` out of range.
    """
    if not 8 <= bits <= 16:
        raise ValueError(f"bits must be in 8..16, got {bits}")
    ssml = f'<speak><prosody range="{prosody.range}%">{escape(text)}</prosody></speak>'
    cmd = [_espeak(), "-m", "-z", "-v", voice, "-p", str(prosody.pitch), "-s", str(prosody.speed)]
    cmd += ["-a", str(prosody.amplitude), "--stdout", ssml]
    proc = subprocess.run(cmd, capture_output=True, timeout=60, check=False)
    if proc.returncode != 0 or not proc.stdout:
        raise RuntimeError(f"espeak-ng failed for voice {voice!r}: {proc.stderr.decode(errors='replace').strip()}")
    audio, rate = sf.read(io.BytesIO(proc.stdout), dtype="float32", always_2d=True)
    if audio.shape[0] == 0:
        raise RuntimeError(f"espeak-ng returned no audio for voice {voice!r} and text {text!r}")
    mono = audio.mean(axis=1, dtype=np.float32)
    if rate != sample_rate:
        mono = _resample(mono, int(rate), sample_rate)
    mono = mono * OUTPUT_GAIN
    peak = float(np.abs(mono).max())
    if peak > PEAK_LIMIT:
        mono = mono * (PEAK_LIMIT / peak)
    step = 2.0 ** (16 - bits) / 32768.0
    return (np.round(mono / step) * step).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Seeded plan: styles, jitter, levels, splits, votes
# --------------------------------------------------------------------------------------------


def _rng(seed: int, *keys: str | int) -> np.random.Generator:
    """A generator that depends only on the seed and the keys (strings hashed with CRC-32), not on call order."""
    entropy = [seed] + [zlib.crc32(k.encode("utf-8")) if isinstance(k, str) else int(k) for k in keys]
    return np.random.default_rng(entropy)


def _draw(rng: np.random.Generator, sd: Style) -> Style:
    z = rng.standard_normal(4)
    return Style(sd.pitch * z[0], sd.speed * z[1], sd.gain_db * z[2], sd.range * z[3])


def clip_prosody(voice: str, emotion: str, level: str, clip_id: str, seed: int = 0) -> Prosody:
    """The espeak-ng settings of one clip: emotion style x level strength + voice style + clip jitter.

    Args:
        voice: espeak-ng voice (seeds the voice's speaking style).
        emotion: intended emotion code (see :data:`EMOTION_STYLES`).
        level: level code (see :data:`LEVEL_STRENGTH`).
        clip_id: seeds the clip's jitter.
        seed: global seed.

    Raises:
        KeyError: unknown emotion or level.
    """
    if emotion not in EMOTION_STYLES or level not in LEVEL_STRENGTH:
        raise KeyError(f"unknown emotion/level {emotion!r}/{level!r}")
    style, k = EMOTION_STYLES[emotion], LEVEL_STRENGTH[level]
    spk = _draw(_rng(seed, "speaker", voice), SPEAKER_SD)
    jit = _draw(_rng(seed, "jitter", clip_id), CLIP_SD)
    pitch = 50 + k * style.pitch + spk.pitch + jit.pitch
    speed = 175 * (1 + k * style.speed) * (1 + spk.speed) * (1 + jit.speed)
    gain_db = k * style.gain_db + spk.gain_db + jit.gain_db
    rng_pct = 100 + k * style.range + spk.range + jit.range
    return Prosody(
        pitch=int(np.clip(round(pitch), 0, 99)),
        speed=int(np.clip(round(speed), 80, 400)),
        amplitude=int(np.clip(round(BASE_AMPLITUDE * 10 ** (gain_db / 20)), 10, 120)),
        range=int(np.clip(round(rng_pct), 10, 200)),
    )


def sample_votes(emotion: str, level: str, rng: np.random.Generator) -> np.ndarray:
    """Vote counts of 4-12 simulated raters for one clip of an (emotion, level) cell.

    The number of raters follows the cell's real rater-count histogram; the votes are
    Dirichlet-multinomial with the cell's mean distribution and fitted precision.

    Returns:
        int64 counts aligned with :data:`CLASSES`.

    Raises:
        KeyError: the cell is not in :data:`ser_lightning.data.demo_votes.CELLS`.
    """
    cell = demo_votes.CELLS.get((emotion, level))
    if cell is None:
        raise KeyError(f"no vote statistics for cell {(emotion, level)}; known: {sorted(demo_votes.CELLS)}")
    hist = np.asarray(cell["raters"], dtype=np.float64)
    raters = int(rng.choice(demo_votes.RATERS, p=hist / hist.sum()))
    probs = rng.dirichlet(cell["precision"] * np.asarray(cell["mean"], dtype=np.float64))
    return rng.multinomial(raters, probs / probs.sum())


def _deal_levels(voice: str, emotion: str, seed: int) -> dict[str, str]:
    """Sentence code -> level for one (voice, emotion): each level on an equal share of the sentences."""
    if emotion == "NEU":
        return dict.fromkeys(SENTENCES, "XX")
    codes = sorted(SENTENCES)
    perm = _rng(seed, "levels", voice, emotion).permutation(len(codes))
    return {codes[i]: LEVELS[j % len(LEVELS)] for j, i in enumerate(perm)}


def voice_splits(voices: Sequence[str], seed: int = 0, genders: dict[str, str] | None = None) -> dict[str, str]:
    """Voice -> ``train``/``val``/``test``, by :data:`SPLIT_RATIOS` within each gender.

    Args:
        voices: distinct espeak-ng voices.
        seed: seed of the shuffle.
        genders: voice -> gender; read from espeak-ng's variant files when ``None``.

    Raises:
        ValueError: duplicate voices or fewer than 3.
    """
    if len(set(voices)) != len(voices) or len(voices) < 3:
        raise ValueError(f"need at least 3 distinct voices, got {list(voices)}")
    if genders is None:
        data_dir = espeak_info()[1]
        genders = {v: voice_gender(v, data_dir) for v in voices}
    out: dict[str, str] = {}
    for gender in sorted({genders[v] for v in voices}):
        group = [v for v in voices if genders[v] == gender]
        # a seed per gender, so that the male and female voices held out need not share an accent
        out.update(group_split(group, group, SPLIT_RATIOS, seed=int(_rng(seed, "split", gender).integers(2**31))))
    for needed in ("train", "val", "test"):
        if needed not in out.values():  # too few voices per gender: fall back to an unstratified split
            return group_split(list(voices), list(voices), SPLIT_RATIOS, seed=seed)
    return out


def plan_clips(voices: Sequence[str], seed: int = 0, genders: dict[str, str] | None = None) -> list[Clip]:
    """All clips of the demo corpus, sorted by id: per voice 12 neutral + 5 x 12 emotional sentences.

    Args:
        voices: espeak-ng voices, one speaker each.
        seed: seed of the level deal and the split.
        genders: voice -> gender for the stratified split (read from espeak-ng when ``None``).
    """
    splits = voice_splits(voices, seed, genders)
    clips = []
    for voice in voices:
        for emotion in EMOTIONS:
            for sentence, level in _deal_levels(voice, emotion, seed).items():
                cid = f"{voice}_{sentence}_{emotion}_{level}"
                clips.append(Clip(cid, voice, sentence, emotion, level, splits[voice]))
    return sorted(clips, key=lambda c: c.id)


# --------------------------------------------------------------------------------------------
# Build
# --------------------------------------------------------------------------------------------


def _js_bits(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    p, q = np.broadcast_arrays(p, q)
    m = 0.5 * (p + q)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_p = np.where(p > 0, p * np.log2(np.where(p > 0, p, 1.0) / m), 0.0).sum(axis=-1)
        kl_q = np.where(q > 0, q * np.log2(np.where(q > 0, q, 1.0) / m), 0.0).sum(axis=-1)
    return 0.5 * (kl_p + kl_q)


def cell_of(clip_id: str) -> tuple[str, str]:
    """(emotion, level) of a demo clip id ``{voice}_{sentence}_{emotion}_{level}``."""
    parts = clip_id.rsplit("_", 2)
    if len(parts) != 3 or (parts[1], parts[2]) not in demo_votes.CELLS:
        raise ValueError(f"not a demo clip id: {clip_id!r}")
    return parts[1], parts[2]


def baseline_js(records: Sequence[UtteranceRecord], split: str = "test") -> dict[str, float]:
    """Mean JS divergence (bits) on ``split`` of three constant predictors.

    ``uniform``; ``train_mean``: the mean training distribution; ``cell_mean``: the CREMA-D mean
    distribution of the clip's (emotion, level) cell, which the demo's votes are drawn around (about the
    best a model can do, since the votes depend on nothing else).
    """
    train = np.asarray([votes_to_distribution(r.votes["primary"]) for r in records if r.split == "train"])
    held = [r for r in records if r.split == split]
    if len(held) == 0 or len(train) == 0:
        raise ValueError(f"baseline_js needs train and {split} records")
    dist = np.asarray([votes_to_distribution(r.votes["primary"]) for r in held])
    cell_mean = np.asarray([demo_votes.CELLS[cell_of(r.id)]["mean"] for r in held])
    return {
        "uniform": float(_js_bits(dist, np.full(len(CLASSES), 1 / len(CLASSES))).mean()),
        "train_mean": float(_js_bits(dist, train.mean(axis=0)).mean()),
        "cell_mean": float(_js_bits(dist, cell_mean).mean()),
    }


def make_records(
    clips: Sequence[Clip], wav_dir: Path, *, seed: int = 0, bits: int = 12, progress: bool = True
) -> list[UtteranceRecord]:
    """Synthesise every clip into ``wav_dir`` (16 kHz PCM_16 WAV) and return its record with sampled votes."""
    records = []
    for clip in tqdm(clips, disable=not progress, unit="clip", desc="espeak-ng"):
        prosody = clip_prosody(clip.voice, clip.emotion, clip.level, clip.id, seed)
        audio = synthesise(SENTENCES[clip.sentence], clip.voice, prosody, bits=bits)
        path = wav_dir / f"{clip.id}.wav"
        sf.write(path, audio, SAMPLE_RATE, subtype="PCM_16")
        votes = sample_votes(clip.emotion, clip.level, _rng(seed, "votes", clip.id))
        records.append(
            UtteranceRecord(
                id=clip.id,
                corpus=CORPUS,
                split=clip.split,
                audio_path=path,
                transcript=SENTENCES[clip.sentence],
                speaker=clip.voice,
                classes=CLASSES,
                votes={"primary": votes.astype(np.float64)},
                vad=None,
                vad_scale=None,
            )
        )
    return records


def build(
    out_dir: str | Path = "shards/demo",
    *,
    seed: int = 0,
    voices: Sequence[str] = DEFAULT_VOICES,
    bits: int = 12,
    maxcount: int = 250,
    progress: bool = True,
) -> dict[str, Any]:
    """Synthesise the demo corpus and write it as shards (plus ``card.json``, ``rejected.jsonl``, ``README.md``).

    Args:
        out_dir: output directory (a new or previous demo directory).
        seed: seed of every random choice (styles, jitter, levels, split, votes).
        voices: espeak-ng voices, one speaker each.
        bits: resolution of the stored samples (see :func:`synthesise`).
        maxcount: samples per shard at most.
        progress: show progress bars.

    Returns:
        The shard card.
    """
    version, data_dir = espeak_info()
    genders = {v: voice_gender(v, data_dir) for v in voices}
    clips = plan_clips(voices, seed, genders)
    split_of = {c.voice: c.split for c in clips}
    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="ser-demo-") as tmp:
        records = make_records(clips, Path(tmp), seed=seed, bits=bits, progress=progress)
        card = write_shards(
            records,
            out_dir,
            sample_rate=SAMPLE_RATE,
            min_duration=0.25,
            maxcount=maxcount,
            workers=1,
            progress=progress,
        )
    info = {
        "espeak_version": version,
        "seed": seed,
        "bits": bits,
        "voices": {s: [v for v in voices if split_of[v] == s] for s in ("train", "val", "test")},
        "genders": genders,
        "js": baseline_js(records),
        "mb": sum(p.stat().st_size for p in out_dir.glob("*.tar")) / 1e6,
    }
    readme = render_readme(card, info, _command(out_dir, seed, voices, bits, maxcount))
    (out_dir / "README.md").write_text(readme, encoding="utf-8")
    return card


def _command(out_dir: Path, seed: int, voices: Sequence[str], bits: int, maxcount: int) -> str:
    cmd = f"python -m ser_lightning.data.demo build --out {out_dir.as_posix()} --seed {seed}"
    if tuple(voices) != DEFAULT_VOICES:
        cmd += " --voices " + " ".join(voices)
    if bits != 12:
        cmd += f" --bits {bits}"
    if maxcount != 250:
        cmd += f" --maxcount {maxcount}"
    return cmd


def render_readme(card: dict[str, Any], info: dict[str, Any], command: str) -> str:
    """The README of a demo shard directory: what it is, how it was built, its numbers."""
    stats, ref, real = card["stats"], demo_votes.REFERENCE_JS, demo_votes.REFERENCE_STATS
    split_rows = "\n".join(
        f"| {s} | {card['num_samples'][s]} | {stats[s]['entropy_mean']:.3f} | {stats[s]['fleiss_kappa']:.3f} | "
        f"{', '.join(info['voices'][s])} |"
        for s in card["num_samples"]
    )
    style_rows = "\n".join(
        f"| {e} | {s.pitch:+g} | {s.speed:+.0%} | {s.gain_db:+g} dB | {s.range:+g}% |"
        for e, s in EMOTION_STYLES.items()
    )
    levels = ", ".join(f"{k} x{v:g}" for k, v in LEVEL_STRENGTH.items())
    a, js = stats["all"], info["js"]
    return f"""# Demo corpus: synthetic speech, a demo, not a benchmark

Speech synthesised with espeak-ng {info["espeak_version"]} for the 12 CREMA-D sentences, "acted" in six
emotions (class set `cremad6`: Anger, Disgust, Fear, Happy, Neutral, Sad) at CREMA-D's levels LO, MD, HI
and XX, with 4-12 simulated raters per clip. It lets every recipe run end to end on a fresh machine
without a licensed corpus or network. **Do not report results on it as emotion recognition results**:
the voices are formant synthesis, the emotions are a few prosody settings, and the votes are random
draws that depend on the intended emotion and level only, not on the audio.

Built from the repository root with espeak-ng {info["espeak_version"]} (the same version and seed give
byte-identical files):

    {command}

The builder is `ser_lightning/data/demo.py` (see its docstring); the shards are written by
`ser_lightning.data.shards.write_shards` in the format of `docs/shard-format.md`.

## Design

- Speakers: {len(info["genders"])} espeak-ng voices (accent + variant), split by voice and stratified
  by gender (seed {info["seed"]}); no speaker is in two splits.
- Per voice, every sentence is spoken neutrally (NEU XX) and in each other emotion at one level; the
  levels are dealt so that each (voice, emotion) has 3 sentences at each level: 72 clips per voice.
  Ids are `{{voice}}_{{sentence}}_{{emotion}}_{{level}}`: the intended emotion and level are the last two
  fields (the sample JSON has no keys of its own for them).
- Prosody: offsets from espeak-ng's defaults (pitch `-p` 50, speed `-s` 175, amplitude `-a`
  {BASE_AMPLITUDE}, SSML pitch range 100%) at full strength, scaled per level ({levels}); each voice
  adds a seeded speaking style and each clip a seeded jitter.

| emotion | pitch | speed | amplitude | pitch range |
|---|---|---|---|---|
{style_rows}

- Audio: 16 kHz mono, output gain {OUTPUT_GAIN:g} (peaks below 0.5), samples rounded to {info["bits"]} bits
  so that FLAC stores the unused low bits for free; FLAC PCM_16 in the shards ({info["mb"]:.1f} MB).
- Votes: per clip, a number of raters from the real rater-count histogram of its (emotion, level) cell
  in CREMA-D's voice-only ratings, and Dirichlet-multinomial votes with the cell's mean distribution
  and fitted precision (`ser_lightning/data/demo_votes.py`, aggregates only, generated by
  `scripts/make_demo_vote_table.py`).

## Numbers

| split | clips | mean entropy (nats) | Fleiss' kappa | voices |
|---|---|---|---|---|
{split_rows}

All: {a["items"]} clips, {a["raters_min"]}-{a["raters_max"]} raters (median {a["raters_median"]}), mean
entropy {a["entropy_mean"]:.3f} nats, Fleiss' kappa {a["fleiss_kappa"]:.3f}, {card["rejected"]} rejected.

Mean Jensen-Shannon divergence (bits) on the test split: uniform predictor {js["uniform"]:.3f},
mean training distribution {js["train_mean"]:.3f}, mean CREMA-D distribution of the clip's (emotion,
level) cell {js["cell_mean"]:.3f} (about the best a model can reach: the votes depend on the cell only).

Real CREMA-D for reference (voice-only ratings, 7,442 clips): mean entropy {real["entropy_mean"]:.3f}
nats, Fleiss' kappa {real["fleiss_kappa"]:.3f}; mean JS (bits) of the uniform predictor
{ref["uniform"]:.3f}, of the overall mean distribution {ref["overall_mean"]:.3f}, of the per-(emotion,
level) mean distribution {ref["cell_mean"]:.3f}.
"""


def main(argv: list[str] | None = None) -> None:
    """``python -m ser_lightning.data.demo build [--out DIR] [--seed N] [--voices V ...]``."""
    parser = argparse.ArgumentParser(prog="python -m ser_lightning.data.demo", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="synthesise the demo corpus and write its shards")
    b.add_argument("--out", type=Path, default=Path("shards/demo"), help="output directory (default shards/demo)")
    b.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    b.add_argument("--voices", nargs="+", default=list(DEFAULT_VOICES), help="espeak-ng voices, one per speaker")
    b.add_argument("--bits", type=int, default=12, help="resolution of the stored samples (default 12)")
    b.add_argument("--maxcount", type=int, default=250, help="samples per shard at most (default 250)")
    b.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    try:
        card = build(
            args.out,
            seed=args.seed,
            voices=args.voices,
            bits=args.bits,
            maxcount=args.maxcount,
            progress=not args.no_progress,
        )
    except (RuntimeError, ValueError) as err:
        sys.exit(f"error: {err}")
    print(json.dumps({"num_samples": card["num_samples"], "rejected": card["rejected"]}))


if __name__ == "__main__":
    main()
