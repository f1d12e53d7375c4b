"""Shards, streaming, DiME-Aug and the LightningDataModule."""
