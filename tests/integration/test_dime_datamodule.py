"""DiME-Aug inside the streaming DataModule: synthetic samples reach training batches, fresh each epoch."""

from __future__ import annotations

import pytest
from shard_fixtures import write_test_shards

from ser_lightning.data.dime.index import build_dime_index
from ser_lightning.data.dime.mixer import DimeMixer
from ser_lightning.data.stream.datamodule import SERDataModule

pytestmark = pytest.mark.integration


def _epoch_ids(dm: SERDataModule, epoch: int) -> list[str]:
    loader = dm.train_dataloader()
    loader.dataset.set_epoch(epoch)
    return [uid for batch in loader.dataset for uid in batch["ids"]]


def test_dime_samples_stream_into_training(tmp_path):
    shards = write_test_shards(tmp_path / "shards", {"train": [40], "val": [6]}, seed=3)
    index_dir = build_dime_index(shards, ratio=0.9)  # a high ratio makes several classes minorities
    mixer = DimeMixer(index_dir, amount=0.5, ratio=0.9, seed=5)  # 50% of the train set, over minorities
    assert mixer.total > 0

    # buffers well below the train size, as on a real corpus (a buffer larger than the corpus mixes
    # several passes of the endless stream into one epoch and dilutes the epoch's synthetic samples)
    opts = {"num_workers": 0, "max_batch_size": 8, "max_batch_seconds": 12.0, "shuffle_buffer": 8, "bucket_buffer": 16}
    plain = SERDataModule(str(shards), **opts)
    dm = SERDataModule(str(shards), augment=mixer, **opts)
    plain.setup("fit")
    dm.setup("fit")
    # an epoch of the augmented stream is longer by the synthetic samples it adds
    assert dm.train_batches(1) > plain.train_batches(1)

    first = _epoch_ids(dm, 0)
    synthetic = [uid for uid in first if uid.startswith("dime-0-")]
    assert len(synthetic) == mixer.total  # buffers small against the epoch: none is left behind
    assert len(set(synthetic)) == len(synthetic)
    # the next epoch draws new mixes, and the same epoch again reproduces them
    assert any(uid.startswith("dime-1-") for uid in _epoch_ids(dm, 1))
    # the DataModule refuses an index built on another label source than the one it trains on
    mixer.label_source = "merged"
    with pytest.raises(ValueError, match="label_source"):
        dm.train_dataloader()
    mixer.label_source = "primary"
    assert _epoch_ids(dm, 0) == first
