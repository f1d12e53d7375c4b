"""The embedded demo corpus: espeak-ng speech acted in six emotions, with CREMA-D-like rater votes.

A fresh machine has no licensed corpus and no network; ``shards/demo/`` lets every recipe run end to end.
It is a demo, not a benchmark: the speech is formant synthesis (espeak-ng), the "acting" is a handful of
prosody settings, and the votes are drawn from aggregate statistics of CREMA-D's real voice-only raters
(:mod:`ser_lightning.data.demo.votes`), independently of what the audio sounds like.

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

Here: the plan (levels, splits, votes), the records and the build. The espeak-ng voice and the prosody
of each clip are in :mod:`ser_lightning.data.demo.synth`, the README written beside the shards in
:mod:`ser_lightning.data.demo.readme`.

Build (deterministic: the same espeak-ng version and seed give byte-identical shards)::

    python -m ser_lightning.data.demo build --out shards/demo --seed 0
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from tqdm.auto import tqdm

from ser_lightning.corpora.crema_d import SENTENCES
from ser_lightning.corpora.record import UtteranceRecord
from ser_lightning.corpora.splits import group_split
from ser_lightning.data.demo import votes as demo_votes
from ser_lightning.data.demo.readme import render_readme
from ser_lightning.data.demo.synth import SAMPLE_RATE, clip_prosody, espeak_info, keyed_rng, synthesise, voice_gender
from ser_lightning.data.shards.writer import write_shards
from ser_lightning.labels import votes_to_distribution

CORPUS = "demo"
CLASSES = demo_votes.CLASSES  # cremad6: Anger, Disgust, Fear, Happy, Neutral, Sad
EMOTIONS = demo_votes.EMOTIONS
LEVELS = demo_votes.LEVELS
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
# Seeded plan: levels, splits, votes
# --------------------------------------------------------------------------------------------


def sample_votes(emotion: str, level: str, rng: np.random.Generator) -> np.ndarray:
    """Vote counts of 4-12 simulated raters for one clip of an (emotion, level) cell.

    The number of raters follows the cell's real rater-count histogram; the votes are
    Dirichlet-multinomial with the cell's mean distribution and fitted precision.

    Returns:
        int64 counts aligned with :data:`CLASSES`.

    Raises:
        KeyError: the cell is not in :data:`ser_lightning.data.demo.votes.CELLS`.
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
    perm = keyed_rng(seed, "levels", voice, emotion).permutation(len(codes))
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
        out.update(group_split(group, group, SPLIT_RATIOS, seed=int(keyed_rng(seed, "split", gender).integers(2**31))))
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
        votes = sample_votes(clip.emotion, clip.level, keyed_rng(seed, "votes", clip.id))
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
