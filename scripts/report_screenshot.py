"""Make docs/report.png: the results page of `ptm classify --report` on the sample photos in data/.

No trained weights can be downloaded where this runs, so the page is made with a ResNet-18 whose weights are
seeded and calibrated on the sample photos (tests/helpers.py): the layout is real, the labels are arbitrary.
Needs Chromium (the Debian package `chromium`).

    .venv/bin/python scripts/report_screenshot.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    import torch
    from helpers import calibrated_state_dict

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("needs Chromium: apt-get install chromium")
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work)
        torch.save(calibrated_state_dict("resnet18", logit_std=6.0), folder / "r18.pth")
        photos = folder / "photos"
        photos.mkdir()
        for name in ("chelsea.png", "coffee.png", "rocket.jpg"):
            shutil.copy(ROOT / "data" / name, photos / name)
        (photos / "not-a-photo.jpg").write_bytes(b"this is text, not a JPEG")
        page = folder / "report.html"
        env = {**os.environ, "PTM_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
        # Relative names, as a user in that folder would type them: the page shows what was typed.
        subprocess.run(
            [
                sys.executable,
                "-m",
                "ptm_cli",
                "classify",
                "-m",
                "resnet18",
                "-w",
                "./r18.pth",
                "-k",
                "3",
                "photos",
                "--report",
                "report.html",
                "-f",
                "jsonl",
            ],
            env=env,
            check=False,
            cwd=folder,
            stdout=subprocess.DEVNULL,
        )
        out = ROOT / "docs" / "report.png"
        subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                f"--user-data-dir={folder / 'profile'}",
                "--virtual-time-budget=5000",
                "--hide-scrollbars",
                "--window-size=1000,860",
                f"--screenshot={out}",
                page.as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
