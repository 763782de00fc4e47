"""`ptm batch` without any engine installed: plan, shards, records, resume, reconcile, merge (local engine)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from batchkit import FifoInput, assert_same_records, corpus, photo_bytes, shard_inodes
from helpers import ROOT, TinyClassifier, ptm_process, run_ptm

from ptm_cli.batch.job import Request, plan_job, split
from ptm_cli.batch.run import run_job
from ptm_cli.errors import HashMismatch
from ptm_cli.tasks.base import ModelOptions


def classify_reference(tiny: TinyClassifier, inputs: list[str]) -> list[dict[str, object]]:
    result = run_ptm(tiny.args(*inputs))
    assert result.code == 1, result.stderr  # the corpus has bad files
    return result.records()


def merged(folder: Path, *fmt: str) -> list[dict[str, object]]:
    result = run_ptm(["batch", "merge", str(folder), *fmt])
    return result.records()


@pytest.mark.parametrize("record_format", ["jsonl", "parquet"])
def test_batch_classify_gives_the_records_of_ptm_classify(
    tiny: TinyClassifier, tmp_path: Path, record_format: str
) -> None:
    inputs = corpus(tmp_path / "photos")
    out = tmp_path / "out"
    result = run_ptm(
        [
            "batch",
            "classify",
            *tiny.options,
            *inputs,
            "--output",
            str(out),
            "--shard-size",
            "4",
            "--format",
            record_format,
        ]
    )
    assert result.code == 1, result.stderr  # some inputs failed, as with ptm classify
    summary = json.loads(result.stdout)
    assert summary["inputs"] == 11 and summary["ok"] == 7 and summary["failed"] == 4
    assert summary["shards"] == 3 and summary["engine"] == "local" and summary["model"] == "tiny"
    assert json.loads((out / "_SUMMARY.json").read_text()) == summary
    assert sorted(p.name for p in (out / "shards").iterdir()) == [f"shard-0000{i}.{record_format}" for i in range(3)]
    reference = classify_reference(tiny, inputs)
    records = merged(out)
    assert_same_records(records, reference)
    assert summary["errors"] == dict(sorted(Counter(r["error"]["type"] for r in reference if "error" in r).items()))


def test_parquet_shards_have_a_nested_schema(tiny: TinyClassifier, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    inputs = corpus(tmp_path / "photos", photos=2)
    out = tmp_path / "out"
    assert run_ptm(["batch", "classify", *tiny.options, *inputs, "--output", str(out), "--format", "parquet"]).code == 1
    table = pq.read_table(out / "shards" / "shard-00000.parquet")
    assert str(table.schema.field("predictions").type) == (
        "list<element: struct<rank: int32, index: int32, label: string, probability: double>>"
    )
    assert str(table.schema.field("error").type) == "struct<type: string, message: string>"
    rows = table.to_pylist()
    assert rows[-1]["input"].endswith("missing.jpg") and rows[-1]["error"]["type"] == "InputNotFound"
    assert [p["rank"] for p in rows[-2]["predictions"]] == [1, 2, 3, 4]


def test_shards_are_consecutive_slices_of_the_manifest(tiny: TinyClassifier, tmp_path: Path) -> None:
    names = [f"img{i}.jpg" for i in range(10)]
    shards = split(names, 3)
    assert [(s.index, s.start, s.names) for s in shards] == [
        (0, 0, ("img0.jpg", "img1.jpg", "img2.jpg")),
        (1, 3, ("img3.jpg", "img4.jpg", "img5.jpg")),
        (2, 6, ("img6.jpg", "img7.jpg", "img8.jpg")),
        (3, 9, ("img9.jpg",)),
    ]
    inputs = corpus(tmp_path / "photos", photos=3)
    out = tmp_path / "out"
    assert run_ptm(["batch", "classify", *tiny.options, *inputs, "--output", str(out), "--shard-size", "3"]).code == 1
    manifest = [json.loads(line) for line in (out / "_MANIFEST.jsonl").read_text().splitlines()]
    assert manifest == [r["input"] for r in classify_reference(tiny, inputs)]
    for shard in split(manifest, 3):
        lines = (out / "shards" / f"shard-{shard.index:05d}.jsonl").read_text().splitlines()
        assert [json.loads(line)["input"] for line in lines] == list(shard.names)


def test_resume_after_a_killed_run_redoes_only_unfinished_shards(tiny_model: TinyClassifier, tmp_path: Path) -> None:
    """A real process killed with SIGKILL in shard 3 of 4; --resume keeps shards 0-2 and equals an uninterrupted run."""
    catalog, weights = tiny_model.catalog, tiny_model.weights
    inputs = corpus(tmp_path / "photos")  # 11 inputs: shards 0-2 full, the pipe is the 12th, in shard 3
    pipe = tmp_path / "pipe.jpg"
    args = ["batch", "classify", "-m", "tiny", "-w", str(weights), *inputs, str(pipe), "--shard-size", "3"]
    env = {"PTM_CATALOG": str(catalog), "PYTHONPATH": str(ROOT)}
    out = tmp_path / "out"
    with FifoInput(pipe, photo_bytes(9), kill_first=True) as fifo:
        process = ptm_process([*args, "--output", str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            process.communicate(timeout=60)
        finally:
            process.kill()
        assert process.returncode == -signal.SIGKILL, "the run was to be killed while reading the pipe"
        assert fifo.killed == [process.pid]
        done = shard_inodes(out)
        assert sorted(done) == ["shard-00000.jsonl", "shard-00001.jsonl", "shard-00002.jsonl"]
        resumed = subprocess.run(
            [sys.executable, "-m", "ptm_cli", *args, "--output", str(out), "--resume"],
            env={**os.environ, **env},
            capture_output=True,
            timeout=60,
        )
        assert resumed.returncode == 1, resumed.stderr  # the corpus has bad files
        assert b"3 of 4 shards are done already; running 1" in resumed.stderr
        summary = json.loads(resumed.stdout)
        assert summary["shards_run"] == 1 and summary["images_run"] == 3 and summary["inputs"] == 12
        after = shard_inodes(out)
        assert {name: after[name] for name in done} == done  # shards 0-2 untouched
        whole = tmp_path / "whole"
        uninterrupted = subprocess.run(
            [sys.executable, "-m", "ptm_cli", *args, "--output", str(whole)],
            env={**os.environ, **env},
            capture_output=True,
            timeout=60,
        )
        assert uninterrupted.returncode == 1, uninterrupted.stderr
    assert merged(out) == merged(whole)
    assert not list((out / "shards").glob(".*.part"))  # the killed run's temporary file is gone


def test_a_missing_or_damaged_shard_file_becomes_worker_failed_records(tiny: TinyClassifier, tmp_path: Path) -> None:
    inputs = corpus(tmp_path / "photos", photos=3)
    out = tmp_path / "out"
    assert run_ptm(["batch", "classify", *tiny.options, *inputs, "--output", str(out), "--shard-size", "2"]).code == 1
    complete = merged(out)
    (out / "shards" / "shard-00001.jsonl").unlink()
    damaged = out / "shards" / "shard-00002.jsonl"
    damaged.write_text(damaged.read_text().splitlines()[0] + "\n")  # one record of two: not the shard
    result = run_ptm(["batch", "merge", str(out)])
    assert result.code == 1
    records = result.records()
    assert [r["input"] for r in records] == [r["input"] for r in complete]
    failed = [r for r in records if r.get("error", {}).get("type") == "WorkerFailed"]
    assert [r["input"] for r in failed] == [r["input"] for r in complete[2:6]]
    assert "--resume" in failed[0]["error"]["message"]
    again = run_ptm(
        ["batch", "classify", *tiny.options, *inputs, "--output", str(out), "--shard-size", "2", "--resume"]
    )
    assert json.loads(again.stdout)["shards_run"] == 2
    assert merged(out) == complete


def test_merge_writes_csv_like_ptm_classify(tiny: TinyClassifier, tmp_path: Path) -> None:
    inputs = corpus(tmp_path / "photos", photos=2)
    out = tmp_path / "out"
    run_ptm(["batch", "classify", *tiny.options, *inputs, "--output", str(out), "-k", "2"])
    ours = run_ptm(["batch", "merge", str(out), "-f", "csv"])
    theirs = run_ptm(["classify", *tiny.options, *inputs, "-k", "2", "-f", "csv"])
    assert ours.code == theirs.code == 1
    assert ours.stdout == theirs.stdout


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["-"], "'-' (an image on stdin) cannot be used"),
        (["-m", "hub:owner/repo/entry"], "hub: models"),
        (["--engine", "local", "--address", "auto"], "--address names a Ray cluster"),
    ],
)
def test_usage_errors(tiny: TinyClassifier, tmp_path: Path, extra: list[str], message: str) -> None:
    photos = corpus(tmp_path / "photos", photos=1)
    args = [*tiny.options, *extra] if extra[0] != "-m" else ["-m", extra[1]]
    positional = ["-"] if extra == ["-"] else photos
    args = [a for a in args if a != "-"]
    result = run_ptm(["batch", "classify", *args, *positional, "--output", str(tmp_path / "o")])
    assert result.code == 2
    assert message in result.stderr
    assert result.stdout == ""


def test_a_used_folder_needs_resume_and_the_same_job(tiny: TinyClassifier, tmp_path: Path) -> None:
    inputs = corpus(tmp_path / "photos", photos=2)
    out = tmp_path / "out"
    assert run_ptm(["batch", "classify", *tiny.options, *inputs, "--output", str(out)]).code == 1
    again = run_ptm(["batch", "classify", *tiny.options, *inputs, "--output", str(out)])
    assert again.code == 2 and "is not empty; add --resume" in again.stderr
    other = run_ptm(["batch", "classify", *tiny.options, *inputs, "--output", str(out), "--resume", "-k", "2"])
    assert other.code == 2 and "made with top_k 5, not 2" in other.stderr
    same = run_ptm(["batch", "classify", *tiny.options, *inputs, "--output", str(out), "--resume"])
    assert same.code == 1 and json.loads(same.stdout)["shards_run"] == 0
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    foreign = run_ptm(["batch", "classify", *tiny.options, *inputs, "--output", str(tmp_path / "other"), "--resume"])
    assert foreign.code == 2 and "holds no ptm batch job" in foreign.stderr
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"
    (tmp_path / "afile").write_text("x")
    assert (
        "is a file"
        in run_ptm(["batch", "classify", *tiny.options, *inputs, "--output", str(tmp_path / "afile")]).stderr
    )


def test_workers_check_the_weights_hash_again(tiny: TinyClassifier, tmp_path: Path) -> None:
    """The file changed between the driver's check and a worker's load: the job stops, nothing is recorded."""
    weights = tmp_path / "tiny-copy.pth"
    weights.write_bytes(tiny.weights.read_bytes())
    request = Request(
        "classify",
        ModelOptions("tiny", weights=str(weights)),
        tuple(corpus(tmp_path / "p", photos=1)),
        str(tmp_path / "out"),
    )
    job = plan_job(request)
    torch.save({"not": torch.zeros(1)}, weights)  # swapped after verification
    with pytest.raises(HashMismatch, match="the driver verified"):
        run_job(job)
    assert not list((tmp_path / "out" / "shards").iterdir())


def test_the_core_imports_no_engine() -> None:
    code = (
        "import sys\n"
        "import ptm_cli.batch.job, ptm_cli.batch.run, ptm_cli.batch.worker, ptm_cli.batch.local_engine\n"
        "import ptm_cli.commands.cmd_batch\n"
        "print(sorted(m for m in ('ray', 'pyspark', 'pyarrow', 'pandas', 'torch') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(("engine", "package"), [("ray", "ray"), ("spark", "pyspark"), ("local", "pyarrow")])
def test_a_missing_engine_says_what_to_install(
    tiny_model: TinyClassifier, tmp_path: Path, engine: str, package: str
) -> None:
    """Run as if the package were not installed (None in sys.modules makes its import fail)."""
    catalog, weights = tiny_model.catalog, tiny_model.weights
    args = [
        "batch",
        "classify",
        "-m",
        "tiny",
        "-w",
        str(weights),
        str(tmp_path),
        "--output",
        str(tmp_path / "o"),
        "--engine",
        engine,
        *(["--format", "parquet"] if package == "pyarrow" else []),
    ]
    code = f"import sys; sys.modules[{package!r}] = None\nfrom ptm_cli.cli import main\nmain({args!r})"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env={**os.environ, "PTM_CATALOG": str(catalog)},
    )
    assert out.returncode == 2, out.stderr
    extra = {"ray": "ptm[ray]", "spark": "ptm[spark]", "local": "ptm[parquet]"}[engine]
    assert f"pip install '{extra}'" in out.stderr
    assert "Traceback" not in out.stderr


def test_batch_translate_writes_what_ptm_translate_writes(generator_file: Path, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    corpus(photos, photos=3)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "photo00.jpg").write_bytes(photo_bytes(5))  # the same output name as photos/photo00.jpg
    inputs = [str(photos), str(tmp_path / "other" / "photo00.jpg")]
    common = ["-m", "horse2zebra", "-w", str(generator_file), "--size", "32"]
    out = tmp_path / "out"
    result = run_ptm(
        ["batch", "translate", *common, *inputs, "--output", str(out), "--shard-size", "2", "--suffix", "_z"]
    )
    assert result.code == 1, result.stderr
    reference_dir = tmp_path / "reference"
    reference = run_ptm(["translate", *common, *inputs, "--output-dir", str(reference_dir), "--suffix", "_z"])
    ours = merged(out)
    theirs = reference.records()
    assert [r["input"] for r in ours] == [r["input"] for r in theirs]
    for mine, ref in zip(ours, theirs, strict=True):
        if "error" in ref:
            assert mine["error"]["type"] == ref["error"]["type"]
            continue
        assert mine["output"] == str(out / "images" / Path(ref["output"]).name)
        assert (mine["size"], mine["model"], mine["weights"]) == (ref["size"], ref["model"], ref["weights"])
        assert Path(mine["output"]).read_bytes() == Path(ref["output"]).read_bytes()
    last = ours[-1]
    assert last["error"]["type"] == "OutputError" and "already written for" in last["error"]["message"]
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(p.name for p in reference_dir.iterdir())


def test_files_from_stdin_and_a_second_run_on_the_same_folder(tiny: TinyClassifier, tmp_path: Path) -> None:
    from ptm_cli.runtime import fsutil

    photos = tmp_path / "photos"
    corpus(photos, photos=2)
    listed = sorted(str(p) for p in photos.iterdir())
    out = tmp_path / "out"
    result = run_ptm(
        ["batch", "classify", *tiny.options, "--files-from", "-", "--output", str(out)],
        stdin=("\n".join(listed) + "\n").encode(),
    )
    assert result.code == 1, result.stderr
    assert [json.loads(line) for line in (out / "_MANIFEST.jsonl").read_text().splitlines()] == listed
    with fsutil.locked(out / "_JOB.json"):  # as a run in progress holds it
        busy = run_ptm(
            ["batch", "classify", *tiny.options, "--files-from", "-", "--output", str(out), "--resume"],
            stdin=("\n".join(listed) + "\n").encode(),
        )
    assert busy.code == 2 and "another ptm batch is running" in busy.stderr


def test_batch_translate_resume_keeps_the_images_already_written(tmp_path: Path) -> None:
    from ptm_cli.nets.cyclegan import build_generator

    generator = tmp_path / "gen.pth"
    torch.manual_seed(3)
    torch.save(build_generator().state_dict(), generator)
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(4):
        (photos / f"p{i}.jpg").write_bytes(photo_bytes(i, (40, 30)))
    args = [
        "batch",
        "translate",
        "-m",
        "horse2zebra",
        "-w",
        str(generator),
        "--size",
        "32",
        str(photos),
        "--output",
        str(tmp_path / "out"),
        "--shard-size",
        "2",
        "--image-format",
        "jpeg",
    ]
    assert run_ptm(args).code == 0
    images = tmp_path / "out" / "images"
    before = {p.name: p.stat().st_ino for p in images.iterdir()}
    assert sorted(before) == ["p0.jpg", "p1.jpg", "p2.jpg", "p3.jpg"]
    (tmp_path / "out" / "shards" / "shard-00000.jsonl").unlink()  # as if the run died after writing the images
    again = run_ptm([*args, "--resume"])
    assert again.code == 0, again.stderr
    assert json.loads(again.stdout)["shards_run"] == 1
    records = merged(tmp_path / "out")
    assert records[:2] == [
        {"input": str(photos / f"p{i}.jpg"), "output": str(images / f"p{i}.jpg"), "skipped": True} for i in range(2)
    ]
    assert all(r["size"] == [40, 30] for r in records[2:])
    assert {p.name: p.stat().st_ino for p in images.iterdir()} == before  # nothing rewritten or overwritten


# --- round 3: shard files ptm did not write, names that are not UTF-8, one job per folder ---------


@pytest.mark.parametrize("line", ["[]", "3", '"photo.png"', '{"no": "input"}', '{"input": 7}'])
def test_a_shard_file_of_valid_json_that_is_no_record_is_redone(
    tiny: TinyClassifier, tmp_path: Path, line: str
) -> None:
    """Found in round 3: a shard line ``[]`` made merge and --resume end with exit 70."""
    inputs = corpus(tmp_path / "photos", photos=3)
    out = tmp_path / "out"
    args = ["batch", "classify", *tiny.options, *inputs, "--output", str(out), "--shard-size", "2"]
    assert run_ptm(args).code == 1
    complete = merged(out)
    (out / "shards" / "shard-00001.jsonl").write_text(f"{line}\n{line}\n")
    result = run_ptm(["batch", "merge", str(out)])
    assert result.code == 1 and "Traceback" not in result.stderr
    failed = [r["input"] for r in result.records() if r.get("error", {}).get("type") == "WorkerFailed"]
    assert failed == [r["input"] for r in complete[2:4]]
    again = run_ptm([*args, "--resume"])
    assert again.code == 1 and json.loads(again.stdout)["shards_run"] == 1
    assert merged(out) == complete


@pytest.mark.parametrize("record_format", ["jsonl", "parquet"])
def test_names_that_are_not_utf8_stay_exact_in_shards(tiny: TinyClassifier, tmp_path: Path, record_format: str) -> None:
    """Found in round 3: one such name failed every input of a Parquet job, on every resume too."""
    photos = tmp_path / "photos"
    photos.mkdir()
    odd = os.fsdecode(b"caf\xe9-\xff.png")
    (photos / odd).write_bytes(photo_bytes(1))
    (photos / "plain.png").write_bytes(photo_bytes(2))
    (photos / os.fsdecode(b"bad-\xfe.png")).write_bytes(b"not an image")
    out = tmp_path / "out"
    ran = run_ptm(["batch", "classify", *tiny.options, str(photos), "--output", str(out), "--format", record_format])
    assert ran.code == 1, ran.stderr  # the broken file, and nothing else
    summary = json.loads(ran.stdout)
    assert summary["ok"] == 2 and summary["failed"] == 1 and "WorkerFailed" not in ran.stdout
    ours = merged(out)
    theirs = run_ptm(tiny.args(str(photos))).records()
    assert_same_records(ours, theirs)
    assert str(photos / odd) in [r["input"] for r in ours]
    if record_format == "parquet":
        import pyarrow.parquet as pq

        shown = pq.read_table(next((out / "shards").iterdir())).column("input").to_pylist()
        assert str(photos / "caf\ufffd-\ufffd.png") in shown  # readable by any Parquet reader
    again = run_ptm(
        ["batch", "classify", *tiny.options, str(photos), "--output", str(out), "--format", record_format, "--resume"]
    )
    assert json.loads(again.stdout)["shards_run"] == 0


def test_a_second_job_in_the_same_folder_is_refused_while_the_first_is_planned(
    tiny: TinyClassifier, tmp_path: Path
) -> None:
    """Found in round 3: a job waiting on its --files-from stdin lost its folder to a second job."""
    corpus(tmp_path / "photos", photos=2)
    photos = sorted(str(p) for p in (tmp_path / "photos").iterdir())
    out = tmp_path / "out"
    first = ptm_process(
        ["batch", "classify", *tiny.options, "--files-from", "-", "--output", str(out)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while not (out / "_JOB.json").exists():  # the folder is claimed before the list is read
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()  # type: ignore[union-attr]
            time.sleep(0.05)
        second = run_ptm(["batch", "classify", *tiny.options, *photos, "--output", str(out)])
        assert second.code == 2 and "is not empty" in second.stderr
        resumed = run_ptm(["batch", "classify", *tiny.options, *photos, "--output", str(out), "--resume"])
        assert resumed.code == 2 and "still being planned" in resumed.stderr
        stdout, stderr = first.communicate(("\n".join(photos) + "\n").encode(), timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 1, stderr.decode()  # the corpus holds broken files
    assert json.loads(stdout)["inputs"] == len(photos)
    assert [json.loads(line) for line in (out / "_MANIFEST.jsonl").read_text().splitlines()] == photos


def test_a_job_that_fails_while_planned_gives_its_folder_back(tiny: TinyClassifier, tmp_path: Path) -> None:
    out = tmp_path / "new"
    missing = run_ptm(
        ["batch", "classify", *tiny.options, "--files-from", str(tmp_path / "nope"), "--output", str(out)]
    )
    assert missing.code == 2 and not out.exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    again = run_ptm(["batch", "classify", *tiny.options, "--files-from", str(tmp_path / "nope"), "--output", str(kept)])
    assert again.code == 2 and kept.is_dir() and not any(kept.iterdir())


def test_resume_refuses_inputs_that_changed(tiny: TinyClassifier, tmp_path: Path) -> None:
    """Found in round 3: --resume after the --files-from list grew silently ran the old list."""
    corpus(tmp_path / "photos", photos=3)
    photos = sorted(str(p) for p in (tmp_path / "photos").iterdir())
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(photos[:4]) + "\n")
    out = tmp_path / "out"
    args = ["batch", "classify", *tiny.options, "--files-from", str(listing), "--output", str(out)]
    assert run_ptm(args).code == 1
    listing.write_text("\n".join(photos) + "\n")
    grown = run_ptm([*args, "--resume"])
    assert grown.code == 2 and "the inputs changed" in grown.stderr and f"{len(photos):,}" in grown.stderr
    listing.write_text("\n".join(reversed(photos[:4])) + "\n")
    reordered = run_ptm([*args, "--resume"])
    assert reordered.code == 2 and "input 1 was" in reordered.stderr
    listing.write_text("\n".join(photos[:4]) + "\n")
    assert json.loads(run_ptm([*args, "--resume"]).stdout)["shards_run"] == 0
