"""A full-size Microsoft CLAP export with random weights, for the benchmarks: its costs are
those of the real one (`make export-msclap` needs the hub). Built through the real export path
(`sound-monitor export --model msclap:VERSION`) from the local hub stand-in (tests/hub_stub.py)
serving a random full-size checkpoint and a tiny text tower (the audio encoder is what the
monitor runs per window).

    python scripts/export_random_msclap.py OUT [--version 2023]
    sound-monitor bench --model OUT --cost-min 3 --cpu-seconds 0 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def main() -> int:
    from hub_stub import HubStub
    from msclap_helpers import hub_layout

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--version", default="2023", choices=("2023", "2022"))
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="msclap-random-") as d:
        repos = hub_layout(Path(d) / "repos", a.version)
        with HubStub() as stub:
            for repo, folder in repos.items():
                stub.add_repo(repo, "0123456789abcdef0123456789abcdef01234567", folder)
            env = dict(os.environ, HF_ENDPOINT=stub.url, HF_HOME=str(Path(d) / "hf-home"), HF_HUB_OFFLINE="0")
            cmd = [sys.executable, "-m", "monitor", "export", "--model", f"msclap:{a.version}", "--out", str(a.out)]
            return subprocess.run(cmd, env=env, cwd=ROOT).returncode


if __name__ == "__main__":
    raise SystemExit(main())
