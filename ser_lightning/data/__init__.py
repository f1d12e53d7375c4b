"""Shards (``shards/``), streaming and the DataModule (``stream/``), DiME-Aug (``dime/``), the demo (``demo/``)."""
