"""The demo corpus's voice: espeak-ng speech whose prosody acts an emotion at a level.

Emotions change pitch (``-p``), speed (``-s``), amplitude (``-a``) and pitch range (SSML
``<prosody range>``), scaled by the level's strength; each voice adds a seeded speaking style and each
clip a seeded jitter (:func:`clip_prosody`). :func:`synthesise` renders one clip and quantises it so
that it converts to 16-bit PCM exactly. The plan of the corpus and its build are in
:mod:`ser_lightning.data.demo`.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import soundfile as sf

from ser_lightning.data.audio_io import resample, single_thread_torch

SAMPLE_RATE = 16000


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


# --------------------------------------------------------------------------------------------
# Seeded prosody: emotion style x level strength + voice style + clip jitter
# --------------------------------------------------------------------------------------------


def keyed_rng(seed: int, *keys: str | int) -> np.random.Generator:
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
    spk = _draw(keyed_rng(seed, "speaker", voice), SPEAKER_SD)
    jit = _draw(keyed_rng(seed, "jitter", clip_id), CLIP_SD)
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
        with single_thread_torch():  # much faster for short clips, and the same bytes every run
            mono = resample(mono, int(rate), sample_rate)
    mono = mono * OUTPUT_GAIN
    peak = float(np.abs(mono).max())
    if peak > PEAK_LIMIT:
        mono = mono * (PEAK_LIMIT / peak)
    step = 2.0 ** (16 - bits) / 32768.0
    return (np.round(mono / step) * step).astype(np.float32)
