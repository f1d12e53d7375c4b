"""Streaming shards into batches: the WebDataset pipeline, length-bucketed batching and ``SERDataModule``."""
