"""The installed stack loads: every module of the package imports, and torchaudio runs on the installed torch.

An incompatible wheel (e.g. a torchaudio built for another torch) or a broken import fails here with the
module's name, instead of as a collection error somewhere else in the suite.
"""

from __future__ import annotations

import importlib
import pkgutil

import pytest
import torch

import ser_lightning

# third-party packages that only an optional extra installs: a module needing one skips when it is absent
OPTIONAL_EXTRAS = {"bitsandbytes": "qlora", "google": "gemini", "google.genai": "gemini"}


def _modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(ser_lightning.__path__, prefix="ser_lightning."))


def test_package_has_modules():
    assert len(_modules()) > 20


@pytest.mark.parametrize("name", _modules())
def test_module_imports(name):
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as err:
        extra = OPTIONAL_EXTRAS.get(err.name or "")
        if extra is None:
            raise
        pytest.skip(f"{name} needs the [{extra}] extra ({err.name} is not installed)")


def test_torchaudio_transform_runs_on_installed_torch():
    import torchaudio
    from torchaudio import functional as AF
    from torchaudio import transforms as T

    assert torchaudio.__version__.split("+")[0] == torch.__version__.split("+")[0], (
        f"torchaudio {torchaudio.__version__} was not built for torch {torch.__version__}"
    )
    t = torch.arange(16000) / 16000
    tone = torch.sin(2 * torch.pi * 440 * t).unsqueeze(0)
    mel = T.MelSpectrogram(sample_rate=16000, n_fft=400, hop_length=160, n_mels=40)(tone)
    assert mel.shape == (1, 40, 101)
    assert torch.isfinite(mel).all()
    # the tone's energy peaks in the mel filter that weighs FFT bin 11 (440 Hz / 40 Hz per bin) most
    fbanks = AF.melscale_fbanks(201, 0.0, 8000.0, 40, 16000)
    assert int(mel[0].mean(-1).argmax()) == int(fbanks[11].argmax())
    resampled = AF.resample(tone, 16000, 8000)
    assert resampled.shape == (1, 8000)
    spectrum = torch.fft.rfft(resampled[0]).abs()
    assert abs(int(spectrum.argmax()) - 440) <= 1  # 1 s at 8 kHz: bin k is k Hz
