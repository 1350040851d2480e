"""Small file helpers shared by the model, cache and fetch modules (numpy + stdlib only)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def atomic_savez(path: Path, prefix: str, **arrays: np.ndarray) -> None:
    """Write an .npz next to ``path`` and rename it into place (readers never see half a file).
    Raises OSError like any write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds like allow_pickle
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file beside it and a rename (readers see the
    old file or the new one, never half of one); the temp file never outlives a failure.
    Raises OSError like any write."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """``text`` (UTF-8) through ``write_bytes_atomic``."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, obj: object, indent: int | None = 2) -> None:
    """``obj`` as JSON through ``write_text_atomic``."""
    write_text_atomic(path, json.dumps(obj, indent=indent) + "\n")


def read_manifest(path: str | os.PathLike, hint: str = "") -> dict:
    """``manifest.json`` as a mapping; anything else (missing, unreadable, not JSON, not an
    object, no ``files`` mapping) is a ModelError whose message ends with ``hint``."""
    from monitor.errors import ModelError

    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{p} is missing{hint}") from None
    except (OSError, ValueError) as e:
        raise ModelError(f"{p} is unreadable ({e}){hint}") from None
    if not isinstance(data, dict) or not isinstance(data.get("files", {}), dict):
        raise ModelError(f"{p} is not a model manifest (a JSON object with a files mapping){hint}")
    return data


def verify_listed(folder: str | os.PathLike, manifest: dict) -> list[str]:
    """Problems with the files ``manifest["files"]`` lists ({name: sha256}): missing or not
    matching their sha256. Empty when every one is intact."""
    folder = Path(folder)
    bad = []
    for name, digest in sorted((manifest.get("files") or {}).items()):
        p = folder / name
        if not p.is_file():
            bad.append(f"{name} is missing")
        elif sha256_file(p) != digest:
            bad.append(f"{name} does not match its sha256")
    return bad


def manifest_lists(target: Path, names: Iterable[str]) -> bool:
    """True when ``target/manifest.json`` is readable, lists every name and every file exists."""
    m = Path(target) / "manifest.json"
    if not m.is_file():
        return False
    try:
        files = json.loads(m.read_text()).get("files", {})
    except (OSError, ValueError, AttributeError):
        return False
    names = list(names)
    return all((Path(target) / f).is_file() for f in names) and set(names) <= set(files)
