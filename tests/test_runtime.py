"""Process tuning happens at the edges: the ptm command, the server and batch workers opt in; library calls do not.

The reused heap (glibc's malloc settings), the OpenMP pace keeper (a thread
that holds an OpenMP team) and ``GOMP_SPINCOUNT`` change the whole process.
A program that calls ``classify_images`` or ``Translator.translate`` gets
none of them unless it calls ``ptm_cli.tune_process()`` itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import DATA, TinyClassifier

LIBRARY_USER = """
import json, os, sys, threading
import torch
from torch import nn
torch.set_num_threads(2)
import ptm_cli
from ptm_cli.cache.catalog import Entry
from ptm_cli.images.inputs import ImageInput
from ptm_cli.images.transforms import Preprocess
from ptm_cli.nets.device import Precision, place_classifier
from ptm_cli.runtime import tuning
from ptm_cli.tasks.classify import Classifier, classify_images

class Net(nn.Module):
    def forward(self, x):
        seen["heap during a pass"].append(tuning.heap_active())
        seen["team holders during a pass"].append(
            sum(t.name == "ptm-openmp-team" for t in threading.enumerate()))
        return x.mean(dim=(2, 3)).repeat(1, 2)

def run():
    entry = Entry(model="net", weights="none", task="classify", architecture="net", labels=None)
    device = torch.device("cpu")
    classifier = Classifier(entry, place_classifier(Net().eval(), device), weights_label="none", labels=None,
                            preprocess=Preprocess(resize=40, crop=32), device=device, precision=Precision("fp32"))
    photos = [ImageInput(p, path=__import__("pathlib").Path(p)) for p in sys.argv[1:]]
    assert all(r.ok for r in classify_images(photos, classifier, batch_size=2))

seen = {"heap during a pass": [], "team holders during a pass": []}
run()
untuned = dict(seen, spincount=os.environ.get("GOMP_SPINCOUNT"), tuned=tuning.tuned())
seen = {"heap during a pass": [], "team holders during a pass": []}
ptm_cli.tune_process()
run()
print(json.dumps({"untuned": untuned, "tuned": dict(seen, spincount=os.environ.get("GOMP_SPINCOUNT"))}))
"""


def _environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    return env


def test_a_library_call_leaves_the_process_alone_until_it_opts_in() -> None:
    photos = [str(DATA / name) for name in ("chelsea.png", "coffee.png", "rocket.jpg")]
    done = subprocess.run(
        [sys.executable, "-c", LIBRARY_USER, *photos],
        capture_output=True,
        text=True,
        timeout=180,
        env=_environment(),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    untuned, tuned = figures["untuned"], figures["tuned"]
    assert untuned["spincount"] is None and untuned["tuned"] is False
    assert not any(untuned["heap during a pass"])  # glibc's malloc settings untouched
    assert not any(untuned["team holders during a pass"])  # no thread holding an OpenMP team
    from ptm_cli.runtime.tuning import glibc

    if glibc() is not None:
        assert all(tuned["heap during a pass"])  # opted in: the passes run in the reused heap
    assert tuned["team holders during a pass"][0] == 1  # and the first pass starts with the threads asleep
    assert tuned["spincount"] is None  # torch was loaded before the call: libgomp had read its settings already


def test_the_ptm_command_sets_the_spin_count_before_torch_loads() -> None:
    code = "import os\nfrom ptm_cli.cli import run\nrun(['--version'])\nprint(os.environ.get('GOMP_SPINCOUNT'))\n"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=_environment(), check=True
    )
    assert done.stdout.splitlines()[-1] == "30000"


@pytest.mark.parametrize(("value", "expected"), [("", "30000"), ("  ", "30000"), ("500", "500")])
def test_an_empty_spin_count_is_no_choice_and_a_set_one_is_kept(value: str, expected: str) -> None:
    """An empty GOMP_SPINCOUNT would make libgomp print 'Invalid value' on every run."""
    code = "import os\nfrom ptm_cli.cli import run\nrun(['--version'])\nprint(os.environ.get('GOMP_SPINCOUNT'))\n"
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**_environment(), "GOMP_SPINCOUNT": value},
        check=True,
    )
    assert done.stdout.splitlines()[-1] == expected


def test_a_batch_worker_tunes_its_process(tmp_path: Path, tiny_model: TinyClassifier) -> None:
    """A worker (a Ray actor, a Spark task, the local engine) is a ptm process: it opts in as it builds its model."""
    catalog, weights = tiny_model.catalog, tiny_model.weights
    code = (
        "import sys\nfrom pathlib import Path\n"
        "from ptm_cli import ModelOptions\nfrom ptm_cli.batch.job import Request, plan_job\n"
        "from ptm_cli.batch.run import run_job\nfrom ptm_cli.runtime import tuning\n"
        "before = tuning.tuned()\n"
        "job = plan_job(Request('classify', ModelOptions('tiny', weights=sys.argv[1]), (sys.argv[2],), sys.argv[3]))\n"
        "summary = run_job(job, engine='local')\n"
        "print(before, tuning.tuned(), summary['ok'])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(weights), str(DATA / "coffee.png"), str(tmp_path / "job")],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env={**_environment(), "PTM_CATALOG": str(catalog)},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True", "1"]
