"""The C kernel under AddressSanitizer and UndefinedBehaviorSanitizer: its tests and a fuzz of its entry point.

    make asan             # or: .venv/bin/python scripts/asan.py [--examples N]

Builds ptm_cli/images/_resample.c with ``-fsanitize=address,undefined`` into
a folder of its own, and runs the kernel's tests (tests/test_fused_resize.py
and the fuzz in tests/test_resample_fuzz.py) against that build: the tests
load it in place of the installed extension (PTM_RESAMPLE_EXTENSION), with the
sanitizers' runtime preloaded, since the Python that runs them is not built
with it. Any error a sanitizer finds stops the run with its report and a
non-zero exit. Where the C compiler has no sanitizers, it says so and exits 0
(``make test`` runs it wherever it can).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "ptm_cli" / "images" / "_resample.c"
FLAGS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer", "-g", "-O1"]


def compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def sanitizers_work(cc: str, folder: Path) -> bool:
    probe = folder / "probe.c"
    probe.write_text("int main(void) { return 0; }\n")
    result = subprocess.run([cc, *FLAGS, str(probe), "-o", str(folder / "probe")], capture_output=True, check=False)
    return result.returncode == 0


def build(cc: str, folder: Path) -> Path:
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    target = folder / f"_resample{suffix}"
    include = sysconfig.get_paths()["include"]
    subprocess.run([cc, *FLAGS, "-shared", "-fPIC", f"-I{include}", str(SOURCE), "-o", str(target)], check=True)
    return target


def runtime_library(cc: str) -> str:
    path = subprocess.run([cc, "-print-file-name=libasan.so"], capture_output=True, text=True, check=True).stdout
    return path.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=2000, help="hypothesis examples per fuzz test")
    args = parser.parse_args()
    cc = compiler()
    with tempfile.TemporaryDirectory(prefix="ptm-asan-") as tmp:
        folder = Path(tmp)
        if cc is None or not sanitizers_work(cc, folder):
            print("asan: skipped, the C compiler here has no AddressSanitizer/UndefinedBehaviorSanitizer")
            return 0
        extension = build(cc, folder)
        env = {
            **os.environ,
            "PTM_RESAMPLE_EXTENSION": str(extension),
            "PTM_FUZZ_EXAMPLES": str(args.examples),
            "LD_PRELOAD": runtime_library(cc),
            # Python and torch are not instrumented: their allocations are not ours to judge.
            # Reports go to files as well: a sanitizer ends the process before pytest shows what it captured.
            "ASAN_OPTIONS": f"detect_leaks=0:alloc_dealloc_mismatch=0:new_delete_type_mismatch=0:"
            f"log_path={folder / 'asan'}",
            "UBSAN_OPTIONS": f"print_stacktrace=1:halt_on_error=1:log_path={folder / 'ubsan'}",
        }
        tests = ["tests/test_fused_resize.py", "tests/test_resample_fuzz.py"]
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--capture=sys", *tests]
        print(f"asan: {extension.name} built with {' '.join(FLAGS)}; running {' '.join(tests)}", flush=True)
        code = subprocess.run(command, cwd=ROOT, env=env, check=False).returncode
        reports = sorted(folder.glob("asan.*")) + sorted(folder.glob("ubsan.*"))
        for report in reports:
            print(report.read_text(errors="replace"), file=sys.stderr)
        if code == 0 and reports:
            return 1  # a report without a failed test is still a finding
        if code != 0 and not reports:  # UndefinedBehaviorSanitizer reports on stderr only: above
            print(f"asan: the run ended with exit code {code}; a sanitizer's report, if any, is above", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
