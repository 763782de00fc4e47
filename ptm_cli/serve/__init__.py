"""``ptm serve``: a warm, private model server for one user, on a Unix socket.

Three modules, by weight: :mod:`.protocol` (message framing, the private
folder, the handshake facts; standard library only), :mod:`.client` (what a
``ptm classify --server auto`` process runs: it imports no torch) and
:mod:`.server` (the process that keeps models loaded and batches requests).
"""
