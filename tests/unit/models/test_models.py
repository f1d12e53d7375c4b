import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy.stats import entropy as scipy_entropy

from ser_lightning.models import AmbER2, WavLMMultitask
from ser_lightning.nn import AudioEncoder, MelEncoder, TextEncoder, tiny_audio_config, tiny_text_config


def _batch(lengths=(16000, 9000, 12000, 5000), num_classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    batch_size, longest = len(lengths), max(lengths)
    audio = torch.zeros(batch_size, longest)
    mask = torch.zeros(batch_size, longest, dtype=torch.long)
    for i, n in enumerate(lengths):
        audio[i, :n] = 0.1 * torch.randn(n, generator=g)
        mask[i, :n] = 1
    votes = torch.randint(0, 5, (batch_size, num_classes), generator=g).float() + 0.5
    ids = torch.randint(1000, 2000, (batch_size, 7), generator=g)
    return {
        "audio": audio,
        "audio_mask": mask,
        "targets": votes / votes.sum(-1, keepdim=True),
        "votes": votes,
        "entropy": torch.tensor(scipy_entropy(votes.double().numpy(), axis=1)),
        "vad": torch.tensor([[3.0, 4.0, 2.0], [2.0, 2.5, 3.0], [5.0, 1.0, 4.0], [float("nan")] * 3])[:batch_size],
        "ids": [f"u{i}" for i in range(batch_size)],
        "transcripts": ["x"] * batch_size,
        "text_input_ids": ids,
        "text_attention_mask": torch.ones_like(ids),
    }


def _slice(batch, i):
    n = int(batch["audio_mask"][i].sum())
    out = {k: (v[i : i + 1] if torch.is_tensor(v) else v[i : i + 1]) for k, v in batch.items()}
    out["audio"], out["audio_mask"] = out["audio"][:, :n], out["audio_mask"][:, :n]
    return out


def _amber2(objective="amber2", **kwargs):
    torch.manual_seed(0)
    text = TextEncoder(model=None, config=tiny_text_config(), freeze=False)
    return AmbER2(
        MelEncoder(n_mels=16, hidden_dim=16, num_layers=2), text, num_classes=4, objective=objective, **kwargs
    )


def _wavlm(**kwargs):
    torch.manual_seed(0)
    return WavLMMultitask(AudioEncoder(config=tiny_audio_config("wavlm"), freeze="none"), num_classes=4, **kwargs)


@pytest.mark.parametrize("make", [_amber2, _wavlm], ids=["amber2", "wavlm_multitask"])
def test_padding_invariance_batch_of_4_equals_4_batches_of_1(make):
    model = make().eval()
    batch = _batch()
    with torch.no_grad():
        together = model(batch)
        alone = torch.cat([model(_slice(batch, i)) for i in range(4)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(together.sum(-1), torch.ones(4))


def test_amber2_student_choice_and_loss_terms():
    model = _amber2(student="audio")
    terms = model.training_loss(_batch())
    assert set(terms) >= {"loss", "rai", "mai", "expert", "u/text", "u/fusion"}
    assert terms["u/text"].item() + terms["u/fusion"].item() == pytest.approx(1.0)
    terms["loss"].backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="student"):
        _amber2(student="video")


def test_amber2_cbce_baseline_uses_class_counts():
    model = _amber2(objective="cbce", class_counts=[100, 10, 50, 5])
    terms = model.training_loss(_batch())
    assert set(terms) == {"loss", "cbce_audio", "cbce_text", "cbce_fusion"}
    assert model.cbce_loss.weight[3] > model.cbce_loss.weight[0]


# Pinned losses of the tiny configs (seeded init, fixed batch): a change of any of these numbers means the
# model, its initialisation or its loss changed; update them only on purpose.
# wavlm_kl 1.0874326 -> 1.0873722: the CCC loss became torchmetrics' concordance_corrcoef (n - 1 moments).
PINNED = {"amber2": 0.0516221, "amber2_cbce": 4.2252717, "wavlm_kl": 1.0873722}


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("amber2", lambda: _amber2()),
        ("amber2_cbce", lambda: _amber2("cbce", class_counts=[3, 2, 1, 1])),
        ("wavlm_kl", lambda: _wavlm(categorical_loss="kl", vad_loss="ccc", vad_weight=1.0)),  # the 1 - CCC option
    ],
)
def test_pinned_loss_regression(name, make):
    model = make().eval()  # eval: no dropout, BatchNorm on running statistics
    loss = model.training_loss(_batch())["loss"].item()
    assert math.isfinite(loss)
    assert loss == pytest.approx(PINNED[name], rel=1e-4), f"{name}: {loss:.7f}"


def test_wavlm_multitask_losses_and_options():
    model = _wavlm(categorical_loss="js", vad_loss="ccc", vad_weight=0.5)
    terms = model.training_loss(_batch())
    assert {"loss", "categorical", "vad_ccc_loss"} <= set(terms)
    assert terms["loss"].item() == pytest.approx(terms["categorical"].item() + 0.5 * terms["vad_ccc_loss"].item())
    no_vad = _wavlm(vad_weight=0.0)
    assert no_vad.vad_head is None  # no head without gradients (DDP would refuse it)
    assert "vad_ccc_loss" not in no_vad.training_loss(_batch())
    with pytest.raises(ValueError, match="categorical_loss"):
        _wavlm(categorical_loss="mse")


def test_predict_step_records():
    model = _amber2().eval()
    model.classes = ["a", "b", "c", "d"]
    with torch.no_grad():
        records = model.predict_step(_batch(), 0)
    assert [r["id"] for r in records] == ["u0", "u1", "u2", "u3"]
    p = torch.tensor(records[0]["probabilities"])
    assert records[0]["entropy"] == pytest.approx(float(-(p * p.log()).sum()), abs=1e-5)


@pytest.mark.parametrize("make", [_amber2, _wavlm], ids=["amber2", "wavlm_multitask"])
def test_eval_step_bins_on_the_batch_entropy(make):
    """The per-bin metrics use the entropy stored in the batch, not one recomputed from the targets."""
    model = make(bin_edges=[0.5]).eval()
    batch = _batch()
    batch["entropy"] = torch.tensor([0.0, 0.0, 0.0, 2.0], dtype=torch.float32)  # any dtype is passed through
    with torch.no_grad():
        model.validation_step(batch, 0)
    out = model.eval_metrics["val"].compute()
    assert (out["bin1/count"].item(), out["bin2/count"].item()) == (3, 1)
    assert model.eval_metrics["val"].bins[0].tolist() == [0, 0, 0, 1]


def test_parameter_groups_split_encoders_from_the_rest():
    model = _amber2(lr=1e-3, encoder_lr=1e-5)
    optimizer = model.configure_optimizers()
    lrs = [g["lr"] for g in optimizer.param_groups]
    assert lrs == [1e-3, 1e-5]
    encoder_ids = {id(p) for enc in (model.audio_encoder, model.text_encoder) for p in enc.parameters()}
    assert {id(p) for p in optimizer.param_groups[1]["params"]} == encoder_ids
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == trainable
    for p in model.audio_encoder.parameters():
        p.requires_grad_(False)
    for p in model.text_encoder.parameters():
        p.requires_grad_(False)
    assert [g["lr"] for g in model.configure_optimizers().param_groups] == [1e-3]  # no empty encoder group
    wavlm = _wavlm(head_lr=1e-4, encoder_lr=1e-6).configure_optimizers()["optimizer"]
    assert [g["lr"] for g in wavlm.param_groups] == [1e-4, 1e-6]


def test_importing_the_models_keeps_the_matplotlib_backend():
    code = (
        "import matplotlib; matplotlib.use('svg'); import ser_lightning.models, ser_lightning.runs.figures; "
        "print(matplotlib.get_backend())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "svg"


def test_figures_render_without_pyplot():
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from ser_lightning.runs.figures import bin_bar_chart, confusion_figure

    values = {f"bin{b}/{k}": torch.tensor(0.5) for b in (1, 2) for k in ("js", "bc", "r2", "acc", "f1", "count")}
    for fig in (bin_bar_chart(values), confusion_figure(torch.eye(3, dtype=torch.long) * 4, ["a", "b", "c"])):
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        assert np.asarray(canvas.buffer_rgba()).shape[2] == 4


def test_eval_batches_tally_skips_and_score_the_reference_predictors_on_the_scored_samples():
    """A batch of only skipped records is tallied, never scored; reference JS is scipy's on the scored targets."""
    from scipy.spatial.distance import jensenshannon

    model = _wavlm().eval()
    mean = [0.4, 0.3, 0.2, 0.1]
    model._expectation["test"] = {"split": "test", "expected": 5, "allow_partial": False, "train_mean": mean}
    batch = {**_batch(), "skipped": [{"key": "k1", "shard": "s.tar", "reason": "bad flac"}]}
    with torch.no_grad():
        model.test_step(batch, 0)
        model.test_step({"ids": [], "skipped": [{"key": None, "shard": "s.tar", "reason": "ReadError"}]}, 1)
        assert model.predict_step({"ids": [], "skipped": []}, 0) == []
    tally = model._tally["test"]
    assert (tally.batches, tally.scored, len(tally.skipped)) == (2, 4, 2)
    targets = batch["targets"].double().numpy()
    uniform = sum(jensenshannon(np.full(4, 0.25), t, base=2) ** 2 for t in targets)
    train_mean = sum(jensenshannon(np.array(mean), t, base=2) ** 2 for t in targets)
    assert tally.uniform_js == pytest.approx(uniform, abs=1e-12)
    assert tally.train_mean_js == pytest.approx(train_mean, abs=1e-12)
    assert model.eval_metrics["test"].compute()["count"].item() == 4
