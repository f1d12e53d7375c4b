"""The contract between data and model: what a batch holds, the data facts a model receives, what is asked of a model.

It imports nothing of ours, so ``data``, ``models``, ``runs``, ``inference`` and ``cli`` all name the same types:

- :class:`Batch`: every key :class:`~ser_lightning.data.stream.batching.Collate` produces (shapes in comments),
  the keys a model's batch transform adds, and the evaluation streams' ``skipped`` records.
- :class:`DataFacts`: every fact a model receives from the DataModule, built by ``SERDataModule.facts()`` and handed
  over by the CLI (``model.connect_data``); :data:`LINKED_FACTS` of them are also linked into the model's
  ``__init__`` arguments, :data:`INPUT_SETTINGS` are recorded in every checkpoint. A model never reads
  ``trainer.datamodule``.
- :class:`DataRequirements`: what a model asks of the data side (sample rate, tokenizer, batch transform), handed to
  ``SERDataModule.connect`` (litgpt's ``DataModule.connect``).
- :class:`SERModel` and the optional :class:`ExpertHeads` / :class:`BuiltOnDevice`: what the CLI and the predictor
  ask of a model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NotRequired, Protocol, TypedDict, runtime_checkable

from torch import Tensor, device


class SkipRecord(TypedDict):
    """A sample (``key``) or a whole shard (``key`` None) an evaluation stream skipped, with the reason."""

    key: str | None
    shard: str
    reason: str


class Batch(TypedDict):
    """A collated batch: B clips of one length-bucket, padded to the longest (T samples, L tokens, C classes)."""

    audio: Tensor  # (B, T) float32 waveforms at the model's sample rate, zero-padded
    audio_mask: Tensor  # (B, T) long, 1 on valid samples
    vad: Tensor  # (B, 3) float32 valence / arousal / dominance ratings, NaN where absent
    ids: list[str]  # utterance ids
    transcripts: list[str]  # "" where none
    speakers: list[str]  # "" where none
    augmented: Tensor  # (B,) bool: a DiME mix or a cropped clip, not the stored utterance (no per-id cache)
    consensus: Tensor  # (B,) long: the corpus's consensus class index, -1 when none (and for a DiME mix)
    # labelled samples only (ser-predict's raw audio has none)
    targets: NotRequired[Tensor]  # (B, C) float32 target distributions of the label source
    votes: NotRequired[Tensor]  # (B, C) float32 vote counts of the label source, NaN where a sample has none
    primary_votes: NotRequired[Tensor]  # (B, C) float32 primary vote counts, NaN where none (a DiME mix)
    entropy: NotRequired[Tensor]  # (B,) float64 stored target entropy in nats (what the ambiguity bins use)
    # with a text tokenizer
    text_input_ids: NotRequired[Tensor]  # (B, L) long
    text_attention_mask: NotRequired[Tensor]  # (B, L) long
    # added by an audio-language model's batch transform (its processor), in the loader workers
    input_ids: NotRequired[Tensor]  # (B, L) long, the prompt with the expanded audio tokens
    attention_mask: NotRequired[Tensor]  # (B, L) long
    input_features: NotRequired[Tensor]  # (B, mel bins, frames) float32
    feature_attention_mask: NotRequired[Tensor]  # (B, frames) long
    # evaluation streams, since the previous batch of the worker: what was skipped, and the bytes read from the shards
    # (a batch of no samples carries only these two and an empty ``ids``)
    skipped: NotRequired[list[SkipRecord]]
    read_bytes: NotRequired[int]


BatchTransform = Callable[[Batch], Mapping[str, Any]]


class DataRequirements(TypedDict, total=False):
    """What a model asks of the data side (``model.data_requirements()`` -> ``SERDataModule.connect``)."""

    sample_rate: int  # audio is resampled to it
    tokenizer: Any  # a Hugging Face tokenizer, or its hub id / local path, for the transcripts
    batch_transform: BatchTransform  # picklable; run on each collated batch in the loader workers


class EvalExpectation(TypedDict):
    """What one validation or test pass must account for: each sample of the card scored, or skipped with a reason."""

    split: str  # the card split streamed, or "assigned <set>" under a split assignment
    expected: int | None  # samples the card lists for it
    allow_partial: bool  # warn and report complete: false instead of stopping
    train_mean: list[float] | None  # the training set's mean distribution (the train-mean reference predictor)


# the data facts linked into every model's __init__ arguments by the CLI (LightningCLI link_arguments)
LINKED_FACTS = ("num_classes", "classes", "bin_edges", "class_counts")
# the DataModule settings that shape a model's input, recorded in every checkpoint (prediction reuses them)
INPUT_SETTINGS = ("crop_seconds", "max_text_length", "text_tokenizer", "label_source", "sample_rate")


@dataclass(frozen=True)
class DataFacts:
    """Every fact a model receives from the data: ``SERDataModule.facts()``, handed over with ``connect_data``.

    The first four (:data:`LINKED_FACTS`) are also the model's linked ``__init__`` arguments; the next five
    (:data:`INPUT_SETTINGS`) go into every checkpoint; the rest serve the run itself.
    """

    num_classes: int
    classes: list[str]
    bin_edges: list[float] | None  # inner entropy edges (nats) of the per-bin metrics: the training set's tertiles
    class_counts: list[float] | None  # training plurality counts per class (class-balanced losses)
    crop_seconds: float | None
    max_text_length: int
    text_tokenizer: str | None
    label_source: str
    sample_rate: int
    max_batch_size: int  # clips per batch at most (gradient accumulation to an effective batch)
    expectations: Mapping[str, EvalExpectation] = field(default_factory=dict)  # "val" / "test"
    damaged_shards: Callable[[str], list[str]] | None = None  # split -> one message per damaged shard (failure path)

    def linked(self) -> dict[str, Any]:
        """The :data:`LINKED_FACTS` as ``{name: value}``."""
        return {name: getattr(self, name) for name in LINKED_FACTS}

    def input_settings(self) -> dict[str, Any]:
        """The :data:`INPUT_SETTINGS` as ``{name: value}``."""
        return {name: getattr(self, name) for name in INPUT_SETTINGS}


@runtime_checkable
class SERModel(Protocol):
    """What the CLI and the predictor ask of a model (``DistributionModule`` implements it)."""

    classes: list[str]
    num_classes: int
    data_facts: DataFacts | None  # None until connect_data

    def data_requirements(self) -> DataRequirements:
        """The sample rate, tokenizer and batch transform the model needs from the data."""
        ...

    def connect_data(self, facts: DataFacts) -> None:
        """Receive the data facts (evaluation expectations, input settings, batch bounds)."""
        ...

    def set_model_spec(self, spec: dict[str, Any]) -> None:
        """Record ``{"class_path", "init_args"}`` (data links applied): how to rebuild the model from a checkpoint."""
        ...

    def predict_step(self, batch: Batch, batch_idx: int) -> list[dict[str, Any]]:
        """One record per utterance: ``id``, ``classes``, ``probabilities``, ``entropy`` and the model's extras."""
        ...


@runtime_checkable
class ExpertHeads(Protocol):
    """A model with several heads whose distributions a prediction row reports as ``experts`` (AmbER²)."""

    def head_logits(self, batch: Batch) -> dict[str, Tensor]:
        """``{head name: (B, C) logits}``."""
        ...


@runtime_checkable
class BuiltOnDevice(Protocol):
    """A model whose base is built on its device after construction (``configure_model``), e.g. a quantised ALM."""

    def is_built(self) -> bool:
        """Whether the base has been built."""
        ...

    def build(self, device: device | str = "cpu") -> None:
        """Build (load) the base on ``device``."""
        ...

