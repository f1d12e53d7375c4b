"""Zero-shot emotion distributions from an audio-language model, with test-time scaling (paper 003, Sec. 4.2).

Qwen2-Audio-Instruct is asked for a JSON distribution over the shards' classes (Appendix Table 1; Table 2 for CoT),
and its answer is parsed with the strategies of Appendix Table 4. Test-time scaling picks or mixes several candidate
answers: the beam with the highest cumulative log-likelihood (BoN), the Dirichlet-mixture mean weighted by the beams'
likelihoods (W-BoN, Eq. 2-3), or a verifier ALM's scores (ALM-v / W-ALM-v, Sec. 4.2.3). ``exact`` (beyond the paper)
reads the distribution from one forward's next-token probabilities. No training: ``validate`` / ``test`` /
``predict`` only, scored by the same metrics, bins and reference predictors as the trained models. The paper
publishes no code; choices it leaves open are named in the arguments below.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from ser_lightning.alm.aggregation import candidate_mixture, dirichlet_mixture_mean, score_weights, select_best
from ser_lightning.alm.distribution_parsing import parse_distribution
from ser_lightning.alm.features import FEATURE_KEYS, ZeroShotFeatures, batch_clips
from ser_lightning.alm.generation import generate_candidates, next_token_distribution, on_model
from ser_lightning.alm.tally import ParseTally
from ser_lightning.alm.verifier import LocalVerifier, Verifier, VerifyRequest, make_verifier
from ser_lightning.alm.zeroshot_prompts import IEMOCAP_BACKGROUND, verifier_prompt
from ser_lightning.models.base import DistributionModule
from ser_lightning.nn.qwen2_audio import offline_processor_sizes, qwen2_audio_base
from ser_lightning.types import Batch, DataRequirements

log = logging.getLogger(__name__)

__all__ = ["ALMDistribution", "ParseTally", "STRATEGIES"]

Strategy = Literal["base", "cot", "bon", "wbon", "verifier", "wverifier", "exact"]
STRATEGIES: tuple[str, ...] = ("base", "cot", "bon", "wbon", "verifier", "wverifier", "exact")
# Sec. 5: B = 5 for BoN / W-BoN and B = 3 for ALM-v / W-ALM-v; one greedy answer otherwise
DEFAULT_BEAMS = {"bon": 5, "wbon": 5, "verifier": 3, "wverifier": 3}
SAMPLE_RATE = 16000  # Qwen2-Audio's feature extractor


class ALMDistribution(DistributionModule):
    """An audio-language model's zero-shot emotion distribution, optionally with test-time scaling (no training).

    The prompt goes in through the DataModule's workers (:class:`~ser_lightning.alm.features.ZeroShotFeatures`,
    left padded); the backbone is loaded frozen in :meth:`configure_model` on the run's device. Per utterance the
    predictions keep the raw answer(s) and parse strategies (``test_predictions.jsonl``), and each pass logs
    ``{stage}/valid_fraction``, ``{stage}/parse/<strategy>`` (candidates per Table-4 strategy),
    ``{stage}/fallback`` (``{stage}/excluded`` under ``invalid_fallback: exclude``) and the verifier's
    ``unparseable`` / ``failures`` counts.

    Args:
        backbone: hub id (``Qwen/Qwen2-Audio-7B-Instruct``) or a local directory laid out like the hub's; ``None``
            builds a random model from ``random_config`` with an offline processor (debug runs).
        num_classes: size of the class set (linked from the DataModule).
        classes: class names, in order (linked from the DataModule).
        bin_edges: entropy edges of the per-bin metrics (linked from the DataModule).
        class_counts: training plurality counts (linked by the CLI; unused).
        random_config: ``Qwen2AudioConfig`` keyword arguments for ``backbone=None``.
        strategy: ``base`` (Table 1, greedy), ``cot`` (Table 2, greedy), ``bon`` (the beam with the highest
            cumulative log-likelihood), ``wbon`` (Eq. 2-3 over the beams), ``verifier`` / ``wverifier`` (the beams
            scored by a verifier ALM, Table 3: the best, or weighted by the scores), ``exact`` (next-token
            probabilities over the class names' first tokens under the annotation prompt; no generation).
        num_beams: beams B; ``None``: the paper's (5 for bon/wbon, 3 for the verifiers), 1 for base/cot.
        max_new_tokens: answer length cap (a JSON dict over 4-9 classes takes 30-80 tokens).
        length_penalty: beam-search length penalty; 0 ranks beams by the cumulative log-likelihood, as Sec. 4.2.2
            describes (transformers' default 1.0 divides it by the length).
        tau: Dirichlet concentration scale of Eq. 3 (it cancels in the mixture mean; the paper sets 1).
        prompt_classes: the names the prompt lists: a list aligned with ``classes``, or a mapping from class names to
            the prompt's (e.g. ``{Neutral: Neutral state}``, the paper's IEMOCAP wording; classes it does not name keep
            their own); ``None`` uses ``classes``. Answers match case-, punctuation- and word-form-insensitively.
        target: ``utterance`` ("...for the target utterance") or ``audio`` (A.1's CREMA-D wording).
        background: the prompt's Background row (Table 1's IEMOCAP sentence by default; ``null`` leaves it out).
        persona: annotation persona of ``exact`` (index into ``alm.prompts.PERSONAS``).
        invalid_fallback: what an utterance with no valid answer gets: ``uniform`` or ``train_mean`` (the training
            split's mean target, from the shards' card), scored and counted as ``fallback``; or ``exclude`` (paper 003
            Appendix A.2: the valid fraction is reported and only valid answers are evaluated): left out of every
            metric and the reference predictors, counted ``invalid`` in the pass's accounting and ``excluded``.
            Its extras say ``valid: false, scored: false``: ``test_predictions.jsonl`` writes ``null``
            probabilities, predict writes the uniform distribution (so every row has one). The default stays
            ``uniform`` for checkpoints saved before ``exclude`` existed; the paper's configs set ``exclude``.
        verifier_backend: ``self`` (the same model verifies, as the offline tests do), ``qwen2-audio`` (another local
            model, ``verifier_model``) or ``gemini`` (any Gemini-API-compatible endpoint; the paper used GPT-4o).
        verifier_model: the verifier's hub id / directory or Gemini model name.
        verifier_options: keyword arguments of the verifier client (e.g. ``attempts``, ``requests_per_second``).
        verifier_weighting: ``wverifier`` weights: ``normalised`` (the scores as weights, Sec. 5: "uses the scores ...
            as weights") or ``softmax`` (Eq. 2 with the scores in place of the log-likelihoods).
        dtype: dtype of the backbone's weights (bf16 on GPU; float32 for CPU debug runs).
        attn_implementation: ``sdpa`` / ``eager`` / ``flash_attention_2``; ``None``: transformers' default.
    """

    def __init__(
        self,
        backbone: str | None = "Qwen/Qwen2-Audio-7B-Instruct",
        num_classes: int = 4,
        classes: Sequence[str] | None = None,
        bin_edges: Sequence[float] | None = None,
        class_counts: Sequence[float] | None = None,
        random_config: dict[str, Any] | None = None,
        strategy: Strategy = "base",
        num_beams: int | None = None,
        max_new_tokens: int = 128,
        length_penalty: float = 0.0,
        tau: float = 1.0,
        prompt_classes: Sequence[str] | dict[str, str] | None = None,
        target: Literal["utterance", "audio"] = "utterance",
        background: str | None = IEMOCAP_BACKGROUND,
        persona: int = 0,
        invalid_fallback: Literal["uniform", "train_mean", "exclude"] = "uniform",
        verifier_backend: Literal["self", "qwen2-audio", "gemini"] = "self",
        verifier_model: str | None = None,
        verifier_options: dict[str, Any] | None = None,
        verifier_weighting: Literal["normalised", "softmax"] = "normalised",
        dtype: str = "bfloat16",
        attn_implementation: str | None = None,
    ) -> None:
        super().__init__(num_classes, classes, bin_edges)
        self.save_hyperparameters()
        if backbone is None and random_config is None:
            raise ValueError("give a backbone (hub id or directory), or backbone=null with a random_config")
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        beams = DEFAULT_BEAMS.get(strategy, 1) if num_beams is None else int(num_beams)
        if beams < 1 or (strategy in ("base", "cot", "exact") and beams != 1):
            raise ValueError(f"strategy {strategy!r} takes {'one beam' if beams >= 1 else 'B >= 1'}, got {beams}")
        if tau <= 0:
            raise ValueError(f"tau must be positive, got {tau}")
        if invalid_fallback not in ("uniform", "train_mean", "exclude"):
            raise ValueError(f"invalid_fallback must be uniform, train_mean or exclude, got {invalid_fallback!r}")
        if verifier_backend != "self" and strategy in ("verifier", "wverifier") and not verifier_model:
            raise ValueError(f"verifier_backend {verifier_backend!r} needs verifier_model")
        if isinstance(prompt_classes, dict):
            self.prompt_classes = [str(prompt_classes.get(name, name)) for name in self.classes]
        else:
            self.prompt_classes = list(prompt_classes) if prompt_classes else list(self.classes)
        if len(self.prompt_classes) != self.num_classes:
            raise ValueError(f"{len(self.prompt_classes)} prompt_classes for {self.num_classes} classes")
        self.strategy = strategy
        self.num_beams = beams
        self.tallies = torch.nn.ModuleDict({stage: ParseTally() for stage in ("val", "test", "predict")})
        self.backbone: torch.nn.Module | None = None
        self.processor: Any | None = None
        self.verifier: Verifier | None = None

    # -- building ---------------------------------------------------------------------------
    def data_requirements(self) -> DataRequirements:
        """16 kHz audio and the strategy's prompt through the processor, in the DataModule's workers."""
        return {"sample_rate": SAMPLE_RATE, "batch_transform": self.feature_transform()}

    def feature_transform(self) -> ZeroShotFeatures:
        """The picklable batch transform producing this model's left-padded inputs."""
        hp = self.hparams
        return ZeroShotFeatures(
            self.prompt_classes,
            strategy=self.strategy,
            target=hp.target,
            background=hp.background,
            persona=hp.persona,
            backbone=hp.backbone,
            processor=self.processor,
            **offline_processor_sizes(hp.random_config),
        )

    def configure_model(self) -> None:
        """Load (or randomly build) the frozen backbone on the trainer's device, and the verifier (idempotent)."""
        if self.backbone is not None:
            return
        trainer = self._trainer
        device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        self.build(device)

    def build(self, device: torch.device | str = "cpu") -> None:
        """The frozen backbone in eval mode, its processor and (for the verifier strategies) the verifier."""
        hp = self.hparams
        model, processor = qwen2_audio_base(
            hp.backbone, hp.random_config, device=device, dtype=hp.dtype, attn_implementation=hp.attn_implementation
        )
        model.to(device).eval().requires_grad_(False)
        self.backbone, self.processor = model, processor
        if self.strategy in ("verifier", "wverifier"):
            if hp.verifier_backend == "self":
                self.verifier = LocalVerifier(model_and_processor=(model, processor), **(hp.verifier_options or {}))
            else:
                options = dict(hp.verifier_options or {})
                if hp.verifier_backend == "qwen2-audio":
                    options.setdefault("device", str(device))
                self.verifier = make_verifier(hp.verifier_backend, hp.verifier_model, **options)

    def is_built(self) -> bool:
        """Whether :meth:`build` has run (the base is loaded)."""
        return self.backbone is not None

    def _require_built(self) -> None:
        if self.backbone is None:
            raise RuntimeError("the backbone is built in configure_model(): call it (or build()) before use")

    # -- no training ------------------------------------------------------------------------
    def training_loss(self, batch: Batch) -> dict[str, Tensor]:
        """Refused: the model is zero-shot."""
        raise RuntimeError("ALMDistribution is zero-shot: run validate, test or predict, not fit")

    def configure_optimizers(self) -> None:
        """Nothing to optimise."""
        return None

    # -- inference --------------------------------------------------------------------------
    def _inputs(self, batch: Batch) -> dict[str, Tensor]:
        """The left-padded processor inputs on the backbone's device and dtype (computed here if the loader did not)."""
        inputs = {k: batch[k] for k in FEATURE_KEYS} if all(k in batch for k in FEATURE_KEYS) else None
        if inputs is None:
            inputs = self.feature_transform()(batch)
        return on_model(inputs, self.backbone)

    def forward(self, batch: Batch) -> Tensor:
        """Predicted distributions ``(B, C)`` under the configured strategy."""
        return self.predict_with_details(batch)[0]

    def predict_with_details(self, batch: Batch) -> tuple[Tensor, list[dict[str, Any]]]:
        """Distributions ``(B, C)`` and per utterance the raw answer(s), parse strategies and validity."""
        self._require_built()
        inputs = self._inputs(batch)
        if self.strategy == "exact":
            return self._exact(inputs)
        tokenizer = self.processor.tokenizer
        found = generate_candidates(
            self.backbone,
            tokenizer,
            inputs,
            num_beams=self.num_beams,
            max_new_tokens=self.hparams.max_new_tokens,
            length_penalty=self.hparams.length_penalty,
        )
        n, b, c = len(found.texts), self.num_beams, self.num_classes
        probs = torch.full((n, b, c), float("nan"), dtype=torch.float64)
        names = [[""] * b for _ in range(n)]
        for i, texts in enumerate(found.texts):
            for j, text in enumerate(texts):
                parsed, names[i][j] = parse_distribution(text, self.prompt_classes)
                if parsed is not None:
                    probs[i, j] = torch.tensor(parsed, dtype=torch.float64)
        valid = ~probs.isnan().any(-1)
        alpha = found.log_likelihood.detach().double().cpu()
        scores, verdicts, misses = self._verify(batch, found.texts, valid)
        final, chosen = self._combine(probs, alpha, scores, valid)
        details = []
        for i in range(n):
            top = chosen[i] if chosen[i] >= 0 else 0
            record: dict[str, Any] = {"raw": found.texts[i][top], "parse_strategy": names[i][top]}
            if b > 1:
                record["candidates"] = [
                    {
                        "raw": found.texts[i][j],
                        "parse_strategy": names[i][j],
                        "log_likelihood": float(alpha[i, j]),
                        **({"verifier_score": verdicts[i][j]} if verdicts is not None else {}),
                    }
                    for j in range(b)
                ]
            details.append(record)
        return self._finish(final, details, [s for row in names for s in row], misses)

    def _exact(self, inputs: dict[str, Tensor]) -> tuple[Tensor, list[dict[str, Any]]]:
        """Next-token probabilities over the class names' first tokens (every answer valid by construction)."""
        from ser_lightning.alm.qwen2_audio_annotator import class_first_tokens

        ids = class_first_tokens(self.processor.tokenizer, self.prompt_classes)
        probs = next_token_distribution(self.backbone, inputs, ids).double().cpu()
        details = [{"raw": None, "parse_strategy": "exact"} for _ in range(probs.shape[0])]
        return self._finish(probs, details, [], (0, 0))

    def _verify(
        self, batch: Batch, texts: list[list[str]], valid: Tensor
    ) -> tuple[Tensor | None, list[list[float | None]] | None, tuple[int, int]]:
        """Verifier scores ``(N, B)`` of the valid candidates, per-candidate scores, (unparseable, failed) counts.

        An unparseable or failed score counts as 0; ``None`` in the per-candidate list: unparseable, failed, not asked.
        """
        if self.strategy not in ("verifier", "wverifier"):
            return None, None, (0, 0)
        clips = batch_clips(batch)
        transcripts = list(batch.get("transcripts") or [""] * len(clips))
        ids = list(batch.get("ids") or [str(i) for i in range(len(clips))])
        hp = self.hparams
        where, requests = [], []
        for i, row in enumerate(texts):
            for j, text in enumerate(row):
                if not valid[i, j]:
                    continue  # an unparseable candidate is no distribution: nothing to verify
                prompt = verifier_prompt(
                    transcripts[i], self.prompt_classes, text, target=hp.target, background=hp.background
                )
                requests.append(VerifyRequest(f"{ids[i]}#{j}", clips[i], SAMPLE_RATE, prompt))
                where.append((i, j))
        scores = torch.zeros(valid.shape, dtype=torch.float64)
        verdicts: list[list[float | None]] = [[None] * valid.shape[1] for _ in range(valid.shape[0])]
        misses = [0, 0]
        for (i, j), answer in zip(where, self.verifier.score(requests) if requests else [], strict=True):
            verdicts[i][j] = answer.score
            scores[i, j] = 0.0 if answer.score is None else answer.score
            misses[1 if answer.failed else 0] += int(answer.score is None)
        return scores, verdicts, (misses[0], misses[1])

    def _combine(self, probs: Tensor, alpha: Tensor, scores: Tensor | None, valid: Tensor) -> tuple[Tensor, list[int]]:
        """The strategy's distribution ``(N, C)`` (NaN rows: no valid candidate) and the chosen candidate's index."""
        if self.strategy in ("base", "cot", "bon"):
            final, index = select_best(probs, alpha, valid)  # base/cot: the single greedy answer
        elif self.strategy == "verifier":
            final, index = select_best(probs, scores, valid)
        elif self.strategy == "wbon":
            final = dirichlet_mixture_mean(probs, alpha, valid, tau=self.hparams.tau)  # Eq. 2-3
            index = torch.zeros(probs.shape[0], dtype=torch.long)
        else:  # wverifier: Eq. 3 with the verifier's weights
            final = candidate_mixture(probs, score_weights(scores, valid, mode=self.hparams.verifier_weighting))
            index = torch.zeros(probs.shape[0], dtype=torch.long)
        return final, [int(k) for k in index]

    def _finish(
        self, final: Tensor, details: list[dict[str, Any]], strategies: list[str], misses: tuple[int, int]
    ) -> tuple[Tensor, list[dict[str, Any]]]:
        """Substitute the fallback for rows without a valid answer, mark them (unscored under exclude), count them."""
        valid = ~final.isnan().any(-1)
        if not bool(valid.all()):
            final = torch.where(valid[:, None], final, self._fallback().to(final)[None, :].expand_as(final))
        exclude = self.hparams.invalid_fallback == "exclude"
        for record, ok in zip(details, valid.tolist(), strict=True):
            record["valid"] = bool(ok)
            if exclude and not ok:
                record["scored"] = False  # the base class leaves the row out of every metric (counted invalid)
        self._parse_tally().update(strategies, valid, *misses)
        return final.to(device=self.device, dtype=torch.float32), details

    def _fallback(self) -> Tensor:
        """The named fallback distribution: uniform (also what ``exclude`` predicts), or the train split's mean."""
        if self.hparams.invalid_fallback == "train_mean":
            stage = "test" if self._stage() == "test" else "val"
            mean = (self._expectation.get(stage) or {}).get("train_mean")
            if mean is not None:
                return torch.as_tensor(mean, dtype=torch.float64)
            log.warning("invalid_fallback=train_mean but the DataModule gave no train mean: using uniform")
        return torch.full((self.num_classes,), 1.0 / self.num_classes, dtype=torch.float64)

    # -- logging ----------------------------------------------------------------------------
    def _stage(self) -> str:
        trainer = self._trainer
        if trainer is None:
            return "predict"
        if trainer.testing:
            return "test"
        return "predict" if trainer.predicting else "val"

    def _parse_tally(self) -> ParseTally:
        return self.tallies[self._stage()]

    def _log_tally(self, stage: str) -> None:
        tally = self.tallies[stage]
        if int(tally.utterances) == 0 and self.trainer.world_size == 1:
            return
        values = tally.compute()  # synchronised across ranks
        if self.hparams.invalid_fallback == "exclude":  # no fallback was scored: the rows were left out
            values["excluded"] = values.pop("fallback")
        self.log_dict({f"{self.eval_prefix[stage]}/{k}": v for k, v in values.items()}, sync_dist=False)
        tally.reset()

    def on_validation_epoch_end(self) -> None:
        """The parse and verifier counts, then the metrics of every model."""
        self._log_tally("val")
        super().on_validation_epoch_end()

    def on_test_epoch_end(self) -> None:
        """The parse and verifier counts, then the metrics of every model."""
        self._log_tally("test")
        super().on_test_epoch_end()

    def on_predict_epoch_end(self) -> None:
        """Log how many predicted utterances had a valid answer (predict logs nothing else)."""
        tally = self.tallies["predict"]
        if int(tally.utterances):
            values = tally.compute()
            log.warning(
                "predict: %.1f%% of %d utterances had a valid answer",
                100 * float(values["valid_fraction"]),
                int(tally.utterances),
            )
        tally.reset()
