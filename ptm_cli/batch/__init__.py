"""``ptm batch``: one classification or translation job over a large set of images, in resumable shards.

The core here imports no engine. :mod:`.job` plans a job from the same
inputs ``ptm classify`` takes and writes its manifest; :mod:`.worker` runs
one shard into one shard file; :mod:`.run` drives an engine over the
shards, reconciles what came back against the manifest and merges the
records; :mod:`.shardfile` reads and writes JSON Lines and Parquet shards.
The engines (:mod:`.local_engine`, :mod:`.ray_engine`,
:mod:`.spark_engine`) are imported only when chosen.
"""
