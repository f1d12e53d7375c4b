"""``test_predictions.jsonl``: one strict-JSON line per scored test utterance, for every model family.

References are independent of the recorder: a numpy softmax of a fixed linear map, the batches' own targets and
entropies, the shards' sample JSON (read with webdataset), and ``predict``'s output of the same model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
import webdataset as wds
from scipy.spatial.distance import jensenshannon
from shard_fixtures import write_test_shards
from torch import Tensor
from torch.utils.data import DataLoader

from ser_lightning.cli.train import main
from ser_lightning.data.shards.card import shard_paths
from ser_lightning.models.base import DistributionModule
from ser_lightning.runs.json_values import strict_json
from ser_lightning.runs.scored_records import ScoredRecords, merge_extras

ROOT = Path(__file__).resolve().parents[3]
WEIGHT = np.array([[1.0, -0.5, 0.2], [0.3, 0.8, -1.0]])  # (features, classes) of the tiny model


def _strict(line: str) -> dict[str, Any]:
    def refuse(name: str) -> None:
        raise AssertionError(f"non-strict JSON constant {name}")

    return json.loads(line, parse_constant=refuse)


class LinearALM(DistributionModule):
    """softmax(x W), with per-utterance extras like an ALM's raw output and parse strategy."""

    def __init__(self) -> None:
        super().__init__(num_classes=3, classes=["a", "b", "c"])
        self.weight = torch.nn.Parameter(torch.tensor(WEIGHT, dtype=torch.float32))

    def forward(self, batch: dict[str, Any]) -> Tensor:
        return (batch["x"] @ self.weight).softmax(-1)

    def predict_with_details(self, batch: dict[str, Any]) -> tuple[Tensor, list[dict[str, Any]] | None]:
        extras = [{"raw": f"answer for {uid}", "strategy": "json_dict"} for uid in batch["ids"]]
        return self(batch), extras


def _batches() -> list[dict[str, Any]]:
    rng = np.random.default_rng(3)
    batches = []
    for b, size in enumerate((3, 2)):
        targets = rng.dirichlet(np.ones(3), size=size).astype(np.float32)
        batches.append(
            {
                "x": torch.tensor(rng.normal(size=(size, 2)), dtype=torch.float32),
                "targets": torch.from_numpy(targets),
                "entropy": torch.tensor(rng.uniform(0, 1, size=size), dtype=torch.float64),
                "ids": [f"z{b}{i}" if i % 2 else f"a{b}{i}" for i in range(size)],
            }
        )
    return [*batches, {"ids": [], "skipped": [{"key": "k", "shard": "s.tar", "reason": "bad"}]}]


def _loader(batches: list[dict[str, Any]]) -> DataLoader:
    return DataLoader(batches, batch_size=None, collate_fn=lambda b: b)


def _trainer(root: Path) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu", logger=False, default_root_dir=root, enable_progress_bar=False, enable_model_summary=False
    )


def test_strict_json_and_extras_never_replace_record_fields():
    assert strict_json({"a": [1.0, float("nan")], "b": (float("inf"), "x"), "c": 2}) == {
        "a": [1.0, None],
        "b": [None, "x"],
        "c": 2,
    }
    assert merge_extras({"id": "u"}, None) == {"id": "u"}
    assert merge_extras({"id": "u"}, {"raw": "{}", "score": float("nan")}) == {"id": "u", "raw": "{}", "score": None}
    with pytest.raises(ValueError, match="probabilities"):
        merge_extras({"id": "u", "probabilities": [1.0]}, {"probabilities": [0.5]})


def test_recorder_writes_non_finite_predictions_as_null(tmp_path):
    recorder = ScoredRecords(["a", "b"])
    entropy = torch.tensor([math.log(2)], dtype=torch.float64)
    batch = {"ids": ["u"], "targets": torch.tensor([[0.5, 0.5]]), "entropy": entropy}
    recorder.add(batch, torch.tensor([[float("nan"), 1.0]]))
    with pytest.raises(ValueError, match="extras"):
        recorder.add(batch, torch.tensor([[0.5, 0.5]]), extras=[{}, {}])
    trainer = _trainer(tmp_path)
    out = recorder.write(trainer, torch.device("cpu"))
    assert out == tmp_path / "test_predictions.jsonl"  # no logger: the default root dir
    assert [_strict(line) for line in out.read_text().splitlines()] == [
        {"id": "u", "classes": ["a", "b"], "target": [0.5, 0.5], "target_entropy": math.log(2),
         "probabilities": [None, 1.0]}
    ]
    assert recorder.records == []


def test_trainer_test_writes_every_scored_utterance_with_extras_and_validate_does_not(tmp_path):
    batches = _batches()
    model = LinearALM()
    _trainer(tmp_path).validate(model, _loader(batches))
    assert not (tmp_path / "test_predictions.jsonl").exists()  # validation passes record nothing

    _trainer(tmp_path).test(model, _loader(batches))
    lines = [_strict(line) for line in (tmp_path / "test_predictions.jsonl").read_text().splitlines()]
    scored = [(b, i) for b in batches[:2] for i in range(len(b["ids"]))]
    assert [r["id"] for r in lines] == sorted(b["ids"][i] for b, i in scored)  # one line each, sorted by id
    by_id = {r["id"]: r for r in lines}
    for b, i in scored:
        record = by_id[b["ids"][i]]
        logits = b["x"][i].double().numpy() @ WEIGHT
        expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        np.testing.assert_allclose(record["probabilities"], expected, atol=1e-6)
        np.testing.assert_allclose(record["target"], b["targets"][i].double().numpy(), atol=0)
        assert record["target_entropy"] == float(b["entropy"][i])
        assert (record["raw"], record["strategy"]) == (f"answer for {b['ids'][i]}", "json_dict")
    assert model.eval_reports["test"]["scored"] == len(lines)

    predicted = _trainer(tmp_path).predict(model, _loader(batches))
    records = {r["id"]: r for batch in predicted for r in batch}
    assert records.keys() == by_id.keys()
    for uid, record in records.items():
        assert record["strategy"] == "json_dict"  # predict carries the extras too
        np.testing.assert_allclose(record["probabilities"], by_id[uid]["probabilities"], atol=1e-6)


def _shard_targets(shards: Path) -> dict[str, dict[str, Any]]:
    urls = [str(p) for p in shard_paths(shards, "test")]
    samples = (json.loads(s["json"]) for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    return {m["id"]: m for m in samples}


@pytest.mark.integration
def test_cli_test_of_a_tiny_wavlm_writes_test_predictions_matching_predict_and_the_shards(tmp_path):
    shards = write_test_shards(tmp_path / "shards", {"train": [4], "val": [2], "test": [4, 3]})
    args = [
        "--config",
        str(ROOT / "configs" / "wavlm_multitask.yaml"),
        "--config",
        str(ROOT / "configs" / "debug" / "tiny.yaml"),
        "--data.shards",
        str(shards),
        "--data.label_source",
        "primary",
        "--trainer.limit_test_batches",
        "1.0",
        "--trainer.limit_predict_batches",
        "1.0",
        "--trainer.logger.init_args.save_dir",
        str(tmp_path),
        "--trainer.logger.init_args.name",
        "wavlm",
        "--trainer.logger.init_args.version",
        "v",
        "--trainer.default_root_dir",
        str(tmp_path),
    ]
    main(["test", *args])  # seed_everything 0: the same random tiny model in both runs
    run_dir = tmp_path / "wavlm" / "v"
    metrics = json.loads((run_dir / "test_metrics.json").read_text())
    lines = [_strict(line) for line in (run_dir / "test_predictions.jsonl").read_text().splitlines()]
    truth = _shard_targets(shards)
    assert len(truth) == 7
    assert [r["id"] for r in lines] == sorted(truth)  # every test utterance once, sorted by id
    assert metrics["scored"] == len(lines)
    for record in lines:
        meta = truth[record["id"]]
        np.testing.assert_allclose(record["target"], meta["distribution"]["primary"], atol=1e-7)
        assert record["target_entropy"] == meta["entropy"]["primary"]
    # the file reproduces the run's mean JS (scipy's distance squared is the divergence)
    js = [jensenshannon(r["probabilities"], r["target"], base=2) ** 2 for r in lines]
    assert float(np.mean(js)) == pytest.approx(metrics["test/js"], abs=1e-6)

    predictions = tmp_path / "predictions.jsonl"
    main(["predict", *args, "--predictions.output_path", str(predictions)])
    predicted = {r["id"]: r["probabilities"] for r in map(json.loads, predictions.read_text().splitlines())}
    assert predicted.keys() == {r["id"] for r in lines}
    for record in lines:
        np.testing.assert_allclose(record["probabilities"], predicted[record["id"]], atol=1e-6)

    from ser_lightning.cli.report import main as report

    assert report([str(run_dir), "--out", str(tmp_path / "report")]) == 0
    table = (tmp_path / "report" / "report.md").read_text()
    assert f"| v | {metrics['test/js']:.4f} | {metrics['test/bc']:.4f} |" in table
    assert (tmp_path / "report" / "entropy_bins.png").stat().st_size > 0
