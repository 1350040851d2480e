#!/usr/bin/env python
"""Build the benchmark model once: a randomly initialised full-size CLAP (the
laion/clap-htsat-unfused architecture; random weights cost exactly what real ones cost),
exported with the project's own `export --int8`. Prints the export directory.

    .venv/bin/python scripts/bench_model.py [DIR]     (default ~/.cache/sound-monitor/bench-full-random)
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clap_factories import make_random_checkpoint

from monitor.models.clap.export import export_clap

DEFAULT_DIR = Path.home() / ".cache" / "sound-monitor" / "bench-full-random"


def ensure_bench_model(base: Path = DEFAULT_DIR) -> tuple[Path, Path]:
    """(HF checkpoint dir, export dir), built if missing."""
    hf, onnx_dir = base / "hf", base / "onnx"
    if not (hf / "model.safetensors").is_file():
        print(f"[bench-model] building a random full-size CLAP checkpoint in {hf} ...", file=sys.stderr)
        make_random_checkpoint(hf, size="full", seed=0)
    manifest = onnx_dir / "manifest.json"
    if not manifest.is_file() or not (onnx_dir / "audio_encoder.int8.onnx").is_file():
        export_clap(str(hf), onnx_dir, int8=True)
    return hf, onnx_dir


def main() -> int:
    print(ensure_bench_model(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_DIR)[1])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
