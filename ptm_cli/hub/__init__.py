"""torch.hub models, behind a trust policy that never prompts and a cache that works offline.

A torch.hub repository is code: loading an entry point imports the
repository's ``hubconf.py`` and calls a function from it. This package decides
*before any of that code runs* whether it may run, and never asks on stdin, so
a pipeline with a closed or non-interactive stdin fails at once instead of
hanging on torch.hub's ``input()`` prompt.

* :mod:`.repos` - naming repositories and where torch.hub keeps them;
* :mod:`.trust` - who may run code here;
* :mod:`.sandbox` - running it: offline rules, safe weights, stdout kept clean;
* :mod:`.classifier` - a hub entry point as a ready classifier.

Importing this package does not import torch.
"""

from __future__ import annotations

from .repos import HubRepo, cached_repos, hub_dir, parse_model_spec, parse_repo, trusted_list_path, trusted_names
from .sandbox import LoadInfo, entry_help, list_entrypoints, load_model, parse_kwargs
from .trust import trust, trusted_by

__all__ = [
    "HubRepo",
    "LoadInfo",
    "cached_repos",
    "entry_help",
    "hub_dir",
    "list_entrypoints",
    "load_model",
    "parse_kwargs",
    "parse_model_spec",
    "parse_repo",
    "trust",
    "trusted_by",
    "trusted_list_path",
    "trusted_names",
]
