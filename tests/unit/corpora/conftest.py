"""Fixture corpora written in each corpus's original layout, with short generated WAVs."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

SAMPLE_RATE = 16000

# --------------------------------------------------------------------------------------------
# IEMOCAP: SessionN/dialog/EmoEvaluation/<dialog>.txt, transcriptions/<dialog>.txt, sentences/wav/
# --------------------------------------------------------------------------------------------

IEMOCAP_HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"

# Session 1: hand-computed votes are in test_iemocap.py.
SES01_EVAL = (
    "[6.2901 - 8.2357]\tSes01F_impro01_F000\tneu\t[2.5000, 2.5000, 2.5000]\n"
    "C-E2:\tNeutral state;\t()\n"
    "C-E3:\tNeutral state;\t()\n"
    "C-E4:\tNeutral state;\t()\n"
    "C-F1:\tNeutral state;\t(curious)\n"
    "A-E3:\tval 3; act 2; dom  2;\t()\n"
    "A-E4:\tval 2; act 3; dom  3;\t(mildly aggravated but staying polite, attitude)\n"
    "A-F1:\tval 3; act 2; dom  1;\t()\n"
    "\n"
    "[10.0100 - 11.3925]\tSes01F_impro01_M000\tang\t[2.0000, 3.5000, 3.5000]\n"
    "C-E1:\tAnger;\t()\n"
    "C-E2:\tAnger; Sadness;\t(angry and annoyed; raised voice)\n"
    "C-E4:\tAnger;\t()\n"
    "C-M1:\tAnger;\t()\n"
    "A-E1:\tval 2; act 4; dom  4;\t()\n"
    "A-E2:\tval 2; act 3; dom  3;\t()\n"
    "A-M1:\tval 1; act 5; dom  5;\t()\n"
    "\n"
    "[14.8872 - 18.0175]\tSes01F_impro01_F001\tfru\t[2.0000, 3.0000, 3.0000]\n"
    "C-E2:\tFrustration; Anger;\t(angry and annoyed; raised voice)\n"
    "C-E3:\tAnger;\t()\n"
    "C-E4:\tFrustration;\t()\n"
    "A-E2:\tval 2; act 3; dom  3;\t()\n"
    "\n"
    "[19.2300 - 21.1000]\tSes01F_impro01_F002\texc\t[4.0000, 3.5000, 3.0000]\n"
    "C-E1:\tExcited;\t()\n"
    "C-E2:\tHappiness; Excited;\t()\n"
    "C-E3:\tSurprise;\t()\n"
    "\n"
    "[22.0000 - 24.0000]\tSes01F_impro01_F003\tfru\t[2.0000, 3.0000, 3.0000]\n"
    "C-E1:\tFrustration;\t()\n"
    "C-E2:\tFrustration;\t()\n"
    "C-E3:\tAnger;\t()\n"
)
SES01_TRANSCRIPT = (
    "Ses01F_impro01_F000 [006.2901-008.2357]: Excuse me.\n"
    "Ses01F_impro01_M000 [010.0100-011.3925]: Do you have your forms?\n"
    "M: [BREATHING]\n"
    "Ses01F_impro01_F001 [014.8872-018.0175]: Yeah; I do.\n"
    "Ses01F_impro01_F002 [019.2300-021.1000]: Is there a problem?\n"
    "Ses01F_impro01_F003 [022.0000-024.0000]: Who told you to get in this line?\n"
)
SES02_EVAL = (
    "[1.0000 - 2.5000]\tSes02M_script01_1_F000\tsad\t[1.5000, 2.0000, 2.0000]\n"
    "C-E1:\tSadness;\t()\n"
    "C-E2:\tSadness;\t()\n"
    "C-E3:\tSadness;\t()\n"
    "A-E1:\tval 1; act 2; dom  2;\t()\n"
    "\n"
    "[3.0000 - 4.0000]\tSes02M_script01_1_M000\tneu\t[3.0000, 2.0000, 3.0000]\n"
    "C-E1:\tNeutral state;\t()\n"
    "C-E2:\tNeutral state;\t()\n"
    "C-E3:\tHappiness;\t()\n"
    "\n"
    "[5.0000 - 6.0000]\tSes02M_script01_1_M001\tneu\t[3.0000, 2.0000, 3.0000]\n"
    "C-E1:\tNeutral state;\t()\n"
    "C-E2:\tNeutral state;\t()\n"
)
SES02_TRANSCRIPT = "Ses02M_script01_1_F000 [001.0000-002.5000]: I miss him.\n"
SES05_EVAL = (
    "[0.5000 - 1.5000]\tSes05F_impro02_F000\tang\t[2.0000, 4.0000, 4.0000]\n"
    "C-E1:\tAnger;\t()\n"
    "C-E2:\tAnger;\t()\n"
    "A-E1:\tval 2; act 4; dom  4;\t()\n"
)
SES05_TRANSCRIPT = "Ses05F_impro02_F000 [000.5000-001.5000]: Stop it.\n"


def write_wav(path: Path, seconds: float = 0.05, seed: int = 0) -> Path:
    """A short mono 16 kHz noise WAV (soundfile), creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(seed).normal(0.0, 0.1, int(seconds * SAMPLE_RATE)).astype(np.float32)
    sf.write(path, noise, SAMPLE_RATE)
    return path


def write_iemocap_dialog(
    root: Path, session: int, dialog: str, evaluation: str, transcript: str, wav_ids: Iterable[str]
) -> None:
    """One dialog of an IEMOCAP release: evaluation file, transcript and the turn WAVs named in ``wav_ids``."""
    base = root / f"Session{session}"
    (base / "dialog" / "EmoEvaluation").mkdir(parents=True, exist_ok=True)
    (base / "dialog" / "transcriptions").mkdir(parents=True, exist_ok=True)
    (base / "dialog" / "EmoEvaluation" / f"{dialog}.txt").write_text(IEMOCAP_HEADER + evaluation, encoding="utf-8")
    (base / "dialog" / "transcriptions" / f"{dialog}.txt").write_text(transcript, encoding="utf-8")
    for turn in wav_ids:
        write_wav(base / "sentences" / "wav" / dialog / f"{turn}.wav")


@pytest.fixture
def iemocap_root(tmp_path: Path) -> Path:
    """Sessions 1, 2 and 5; ``Ses02M_script01_1_M000`` has no WAV, ``Ses02M_script01_1_M001`` no transcript."""
    root = tmp_path / "IEMOCAP_full_release"
    ses01 = [f"Ses01F_impro01_{t}" for t in ("F000", "M000", "F001", "F002", "F003")]
    write_iemocap_dialog(root, 1, "Ses01F_impro01", SES01_EVAL, SES01_TRANSCRIPT, ses01)
    ses02 = ["Ses02M_script01_1_F000", "Ses02M_script01_1_M001"]
    write_iemocap_dialog(root, 2, "Ses02M_script01_1", SES02_EVAL, SES02_TRANSCRIPT, ses02)
    write_iemocap_dialog(root, 5, "Ses05F_impro02", SES05_EVAL, SES05_TRANSCRIPT, ["Ses05F_impro02_F000"])
    return root


# --------------------------------------------------------------------------------------------
# MSP-Podcast 2.x: Labels/labels_consensus.csv, Labels/labels_detailed.csv, Audios/, Transcripts/
# --------------------------------------------------------------------------------------------

MSP_CONSENSUS = (
    "FileName,EmoClass,EmoAct,EmoVal,EmoDom,SpkrID,Gender,Split_Set\n"
    "MSP-PODCAST_0001_0008.wav,N,4.2,4.0,4.4,127,Female,Development\n"
    "MSP-PODCAST_0001_0019.wav,H,4.8,5.6,4.6,127,Female,Train\n"
    "MSP-PODCAST_0002_0033.wav,A,5.0,2.0,5.0,Unknown,Unknown,Test1\n"
    "MSP-PODCAST_0003_0001.wav,O,3.0,4.0,4.0,12,Male,Test2\n"
    "MSP-PODCAST_0004_0002.wav,S,2.0,2.0,3.0,31,Male,Test3\n"
    "MSP-PODCAST_0005_0003.wav,N,4.0,4.0,4.0,40,Female,Validation\n"
    "MSP-PODCAST_0006_0004.wav,N,4.0,4.0,4.0,41,Female,Train\n"
)
MSP_DETAILED = (
    "FileName,WorkerID,EmoClass_Major,EmoClass_Second,EmoAct,EmoVal,EmoDom\n"
    'MSP-PODCAST_0001_0008.wav,WORKER00001,Neutral,"Neutral,Concerned",4,4,4\n'
    "MSP-PODCAST_0001_0008.wav,WORKER00002,Neutral,Neutral,4,5,4\n"
    'MSP-PODCAST_0001_0008.wav,WORKER00003,Happy,"Happy,Amused,Surprise",5,4,5\n'
    'MSP-PODCAST_0001_0008.wav,WORKER00004,Other-Curious,"Other-Curious,Neutral",4,3,4\n'
    "MSP-PODCAST_0001_0008.wav,WORKER00005,Neutral,,4,4,5\n"
    "MSP-PODCAST_0001_0019.wav,WORKER00001,Happy,Happy,5,6,5\n"
    "MSP-PODCAST_0001_0019.wav,WORKER00006,Happy,,5,5,4\n"
    "MSP-PODCAST_0001_0019.wav,WORKER00007,Surprise,Happy,4,6,5\n"
    'MSP-PODCAST_0002_0033.wav,WORKER00002,Angry,"Angry,Anger,Annoyed",5,2,5\n'
    "MSP-PODCAST_0002_0033.wav,WORKER00003,Angry,,5,2,5\n"
    'MSP-PODCAST_0002_0033.wav,WORKER00004,Contempt,"Contempt,Angry",5,2,5\n'
    "MSP-PODCAST_0002_0033.wav,WORKER00005,Disgust,Disgust,5,2,5\n"
    "MSP-PODCAST_0002_0033.wav,WORKER00006,Angry,Frustrated,5,2,5\n"
    "MSP-PODCAST_0003_0001.wav,WORKER00001,Other-Bored,,3,4,4\n"
    "MSP-PODCAST_0003_0001.wav,WORKER00002,Other-confused,,3,4,4\n"
    "MSP-PODCAST_0003_0001.wav,WORKER00003,Other,,3,4,4\n"
    "MSP-PODCAST_0004_0002.wav,WORKER00001,Sad,Sad,2,2,3\n"
    "MSP-PODCAST_0004_0002.wav,WORKER00002,Sad,,2,2,3\n"
    "MSP-PODCAST_0005_0003.wav,WORKER00001,Neutral,,4,4,4\n"
    "MSP-PODCAST_0005_0003.wav,WORKER00002,Neutral,,4,4,4\n"
    "MSP-PODCAST_9999_0001.wav,WORKER00002,Neutral,,4,4,4\n"
)
MSP_TRANSCRIPTS = {
    "MSP-PODCAST_0001_0008": "so what did you think of it",
    "MSP-PODCAST_0001_0019": "oh that's wonderful",
    "MSP-PODCAST_0002_0033": "I can't believe they did that",
    "MSP-PODCAST_0004_0002": "it was a hard year",
}


def write_msp_podcast(root: Path, consensus: str = MSP_CONSENSUS, detailed: str | None = MSP_DETAILED) -> Path:
    """An MSP-Podcast 2.x tree: label CSVs, a WAV per consensus row, some transcripts (0005_0003 has none)."""
    (root / "Labels").mkdir(parents=True, exist_ok=True)
    (root / "Labels" / "labels_consensus.csv").write_text(consensus, encoding="utf-8")
    if detailed is not None:
        (root / "Labels" / "labels_detailed.csv").write_text(detailed, encoding="utf-8")
    for line in consensus.splitlines()[1:]:
        write_wav(root / "Audios" / line.split(",")[0])
    (root / "Transcripts").mkdir(exist_ok=True)
    for stem, text in MSP_TRANSCRIPTS.items():
        (root / "Transcripts" / f"{stem}.txt").write_text(text + "\n", encoding="utf-8")
    return root


@pytest.fixture
def msp_root(tmp_path: Path) -> Path:
    """The MSP-Podcast fixture tree (``MSP-PODCAST_0006_0004`` has no per-rater rows)."""
    return write_msp_podcast(tmp_path / "MSP-PODCAST-Publish-2.0")


@pytest.fixture
def wav_writer() -> Callable[..., Path]:
    """The WAV writer, for tests that lay out their own files."""
    return write_wav
