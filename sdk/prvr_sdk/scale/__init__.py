"""Scaling out: work that outgrows one process.

``shards`` is the on-disk format of sharded embeddings (one ``VideoEmbeddings`` file per input feature
shard plus a ``manifest.json``), engine-free; ``ray_encode`` fills such a folder on a Ray cluster. Optional
engines (ray) are imported inside functions only, so ``import prvr_sdk`` never needs them.
"""
