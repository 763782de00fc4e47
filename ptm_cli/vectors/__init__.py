"""Image vectors at rest: index files, exact and approximate search, near-duplicate groups.

Nothing here runs a network or imports torch: ``ptm embed`` makes the
vectors (:mod:`ptm_cli.tasks.embed`), and this package stores them
(:mod:`.indexfile`), searches them chunk by chunk (:mod:`.search`), groups
near-duplicates (:mod:`.dupes`) and builds faiss indexes (:mod:`.ann`).
"""
