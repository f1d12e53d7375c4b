"""SERDataModule in one process: card-derived properties, the batch-count rule, loaders, tokenizer, seed."""

import json
import logging
import math

import numpy as np
import pytest
import torch
from scipy.stats import entropy as scipy_entropy
from shard_fixtures import tone, utterance, write_clips

from ser_lightning.data.stream.datamodule import SERDataModule

CLASSES = ["Anger", "Happiness", "Neutral", "Sadness"]  # as in shard_fixtures

# train votes and their plurality class (ties toward the first class), worked out by hand
VOTES = [[5, 0, 0, 0], [0, 3, 1, 1], [2, 2, 1, 0], [0, 0, 1, 4], [1, 1, 1, 2], [0, 4, 1, 0]]
PLURALITY_COUNTS = [2, 2, 0, 2]  # 0, 1, 0 (tie), 3, 3, 1
# clip seconds and b(d) = min(32, floor(2 s / d)): 6, 4, 2, 1 clips per 2 s batch
SECONDS = [0.3, 0.45, 0.9, 1.1]
INVERSE_SIZES = 1 / 6 + 1 / 4 + 1 / 2 + 1  # a clip of each duration takes 1 / b(d) of a batch


@pytest.fixture(scope="module")
def labelled_dir(tmp_path_factory):
    """6 train clips with the votes above, 2 val clips; card written by write_shards."""
    clips = [(utterance(f"t{n}", "train", v), tone(0.5)) for n, v in enumerate(VOTES)]
    clips += [(utterance(f"v{n}", "val", [1, 0, 0, 1]), tone(0.5)) for n in range(2)]
    root = tmp_path_factory.mktemp("labelled")
    write_clips(clips, root)
    return root


@pytest.fixture(scope="module")
def timed_dir(tmp_path_factory):
    """12 train clips, three of each duration in SECONDS, in one shard."""
    clips = [(utterance(f"t{n:02d}", "train", [1, 0, 0, 0]), tone(SECONDS[n % 4])) for n in range(12)]
    root = tmp_path_factory.mktemp("timed")
    write_clips(clips, root)
    return root


def test_datamodule_card_properties(shard_dir):
    dm = SERDataModule(str(shard_dir))
    assert dm.classes == CLASSES
    assert dm.num_classes == 4
    assert dm.card["num_samples"]["train"] == 24
    assert len(dm.bin_edges) == 2


def test_bin_edges_and_class_counts_come_from_the_card(labelled_dir):
    dm = SERDataModule(str(labelled_dir))
    entropies = [scipy_entropy(v) for v in VOTES]  # independent reference: scipy + numpy quantiles
    np.testing.assert_allclose(dm.bin_edges, np.quantile(entropies, [1 / 3, 2 / 3]), rtol=0, atol=1e-12)
    assert dm.class_counts == PLURALITY_COUNTS
    assert all(isinstance(c, float) for c in dm.class_counts)


def test_old_cards_fall_back_to_one_scan_of_the_train_split(labelled_dir, tmp_path, caplog):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(labelled_dir, old)
    card = json.loads((old / "card.json").read_text())
    del card["label_sources"]  # a card written before label_sources existed
    (old / "card.json").write_text(json.dumps(card))
    dm = SERDataModule(str(old))
    with caplog.at_level(logging.INFO):
        assert dm.class_counts == PLURALITY_COUNTS
        assert dm.bin_edges == SERDataModule(str(labelled_dir)).bin_edges
    assert caplog.text.count("scanning the train split") == 1  # one scan serves both properties


def test_no_train_split_means_no_edges_or_counts(tmp_path):
    write_clips([(utterance("v0", "val", [1, 0, 0, 1]), tone(0.5))], tmp_path)
    dm = SERDataModule(str(tmp_path))
    assert dm.bin_edges is None
    assert dm.class_counts is None


def test_datamodule_rejects_bad_configuration(shard_dir):
    with pytest.raises(ValueError, match="max_batch_seconds"):
        SERDataModule(str(shard_dir), max_batch_seconds=0)
    with pytest.raises(ValueError, match="label_source 'merged' is not in these shards"):
        SERDataModule(str(shard_dir), label_source="merged").setup("fit")
    with pytest.raises(ValueError, match="label_source 'merged'"):
        _ = SERDataModule(str(shard_dir), label_source="merged").bin_edges  # the CLI links it before setup
    with pytest.raises(ValueError, match="split 'dev'"):
        SERDataModule(str(shard_dir), val_split="dev").setup("validate")
    with pytest.raises(FileNotFoundError, match="card.json"):
        _ = SERDataModule(str(shard_dir / "nowhere")).classes


def test_datamodule_estimates_train_batches_from_durations(timed_dir):
    dm = SERDataModule(str(timed_dir), max_batch_seconds=2.0, max_batch_size=32)
    # 12 clips take 3 x INVERSE_SIZES = 5.75 batches: ceil(5.75 / world_size) per rank
    assert dm.train_batches(world_size=1) == 6
    assert dm.train_batches(world_size=2) == 3
    assert dm.train_batches(world_size=4) == 2
    assert dm.train_batches(world_size=1) == math.ceil(3 * INVERSE_SIZES)
    assert SERDataModule(str(timed_dir), train_batches_per_epoch=9).train_batches(world_size=4) == 9


@pytest.fixture(scope="module")
def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, "utterance": 2, "says": 3, "hello": 4}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")


def test_datamodule_batches_with_tokenizer_from_connect(shard_dir, tiny_tokenizer):
    dm = SERDataModule(str(shard_dir), num_workers=0, max_batch_size=4, max_text_length=3)
    dm.connect(sample_rate=8000, tokenizer=tiny_tokenizer)
    dm.setup("test")
    batches = list(dm.test_dataloader())
    assert sorted(i for b in batches for i in b["ids"]) == [f"test.{n:04d}" for n in range(10)]
    batch = batches[0]
    expected = {"audio", "audio_mask", "targets", "votes", "primary_votes", "entropy", "vad", "ids", "transcripts"}
    expected |= {"speakers", "augmented", "consensus"}
    assert set(batch) == expected | {"text_input_ids", "text_attention_mask", "skipped", "read_bytes"}
    assert batch["skipped"] == []  # what the stream skipped since the previous batch: nothing here
    assert batch["text_input_ids"].shape == (len(batch["ids"]), 3)  # truncated to max_text_length
    assert batch["text_input_ids"][0].tolist() == tiny_tokenizer(batch["transcripts"][0])["input_ids"][:3]
    assert batch["text_input_ids"][0, 0] == 2  # "utterance"
    assert batch["audio"].shape[1] <= 1.5 * 8000 + 1


def test_datamodule_loads_tokenizer_from_a_local_path(shard_dir, tiny_tokenizer, tmp_path):
    tiny_tokenizer.save_pretrained(tmp_path / "tok")
    dm = SERDataModule(str(shard_dir), num_workers=0, text_tokenizer=str(tmp_path / "tok"))
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    assert batch["text_input_ids"].dtype == torch.long
    assert batch["text_attention_mask"].sum() > 0


def test_datamodule_train_loader_follows_the_seed(shard_dir):
    def ids(seed):
        dm = SERDataModule(str(shard_dir), num_workers=0, seed=seed, train_batches_per_epoch=4, shuffle_buffer=8)
        dm.setup("fit")
        loader = dm.train_dataloader()
        return [b["ids"] for b in loader], [b["ids"] for b in loader]

    (a0, a1), (b0, b1), (c0, _) = ids(0), ids(0), ids(1)
    assert a0 == b0
    assert a1 == b1
    assert a0 != a1
    assert a0 != c0


class _AddLength:
    """A picklable batch transform like a model's processor: adds a key computed from the collated batch."""

    def __call__(self, batch):
        return {"valid_samples": batch["audio_mask"].sum(-1)}


def test_batch_transform_from_connect_runs_in_the_workers_and_adds_its_keys(shard_dir):
    dm = SERDataModule(str(shard_dir), num_workers=1, max_batch_size=4, crop_seconds=None)
    dm.connect(sample_rate=8000, batch_transform=_AddLength())
    dm.setup("test")
    batches = list(dm.test_dataloader())
    scored = [b for b in batches if b["ids"]]
    assert sum(len(b["ids"]) for b in scored) == 10
    for batch in scored:
        assert batch["valid_samples"].tolist() == batch["audio_mask"].sum(-1).tolist()
        assert batch["augmented"].dtype == torch.bool
        assert not batch["augmented"].any()  # stored clips, uncropped: a per-utterance cache may key them by id
        assert len(batch["speakers"]) == len(batch["ids"])


def test_a_cropped_clip_is_marked_augmented(shard_dir):
    dm = SERDataModule(str(shard_dir), num_workers=0, max_batch_size=16, crop_seconds=0.25)
    dm.connect(sample_rate=8000)
    dm.setup("test")
    for batch in dm.test_dataloader():
        if not batch["ids"]:
            continue
        lengths = batch["audio_mask"].sum(-1)
        # fixture clips last 0.2-1.5 s: those the crop shortened are no longer the stored utterance
        assert batch["augmented"].any()
        assert (lengths[batch["augmented"]] == 2000).all()
