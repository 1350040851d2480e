"""`models fetch clap` against a local stand-in of the hub (tests/hub_stub.py, HF_ENDPOINT):
the pre-exported CLAP in the transformers.js layout, built here from the tiny checkpoint.

The runtime-only test builds a virtual environment with the runtime dependencies of
pyproject.toml alone (no torch, no transformers) and checks that fetch + classify there
equal the transformers pipeline on the same checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tomllib
from hub_stub import HubStub

from monitor.config import HubConfig
from monitor.errors import UserError
from monitor.models.clap import fetch

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "monitor" / "demo"
ANIMALS = ["dog", "cat", "cow", "duck", "frog", "horse", "owl", "pig", "rooster", "sheep"]
AUDIO = "onnx/audio_model.onnx"
TEXT = "onnx/text_model.onnx"


@pytest.fixture(scope="session")
def js_layout(tiny_clap_dir, tmp_path_factory) -> Path:
    from clap_factories import make_transformersjs_layout

    return make_transformersjs_layout(tiny_clap_dir, tmp_path_factory.mktemp("xenova") / "repo")


def _stub(js_dir: Path, ckpt_dir: Path) -> HubStub:
    s = HubStub()
    s.add_repo(fetch.DEFAULT_REPO, fetch.DEFAULT_REVISION, js_dir)
    s.add_repo(fetch.CHECKPOINT_REPO, fetch.CHECKPOINT_REVISION, ckpt_dir)
    return s


@pytest.fixture
def hub(js_layout, tiny_clap_dir, monkeypatch, tmp_path):
    with _stub(js_layout, tiny_clap_dir) as s:
        monkeypatch.setenv("HF_ENDPOINT", s.url)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
        yield s


def _env(stub: HubStub, tmp_path: Path, **extra) -> dict:
    env = dict(
        os.environ,
        HF_ENDPOINT=stub.url,
        HF_HOME=str(tmp_path / "hf-home"),
        SOUND_MONITOR_STATE=str(tmp_path / "state"),
        HF_HUB_DISABLE_TELEMETRY="1",
        PYTHONPATH=str(ROOT),
    )
    env.pop("HF_HUB_OFFLINE", None)
    env.update(extra)
    return env


def _cli(python: str, *args, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [python, "-m", "monitor", *args], capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT
    )


def _one_line_error(r: subprocess.CompletedProcess, *words: str) -> str:
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, r.stderr
    for w in words:
        assert w in errors[0], errors[0]
    return errors[0]


def _ckpt_logit_scale(ckpt: Path) -> float:
    from safetensors.numpy import load_file

    return float(np.exp(load_file(str(ckpt / "model.safetensors"))["logit_scale_a"]))


def _listing(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*"))


# --------------------------------------------------------------------------------------
# runtime dependencies only
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def runtime_python(tmp_path_factory) -> str:
    """A virtual environment with pyproject.toml's runtime dependencies and nothing else."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    venv = tmp_path_factory.mktemp("runtime-venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    r = subprocess.run([py, "-m", "pip", "install", "-q", *deps], capture_output=True, text=True, timeout=1200)
    if r.returncode != 0:
        pytest.fail(f"cannot install the runtime dependencies in a fresh venv: {r.stderr[-1500:]}")
    return py


@pytest.mark.slow
def test_fetch_and_classify_without_torch_equal_the_pipeline(
    runtime_python, js_layout, tiny_clap_dir, demo_clips_48k, tmp_path
):
    import transformers  # a test dependency: the reference must run, not be skipped

    probe = subprocess.run(
        [
            runtime_python,
            "-c",
            "import importlib.util as u; print([m for m in ('torch', 'transformers') if u.find_spec(m)])",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.strip() == "[]", "the runtime venv must hold neither torch nor transformers"
    models = tmp_path / "models"
    with _stub(js_layout, tiny_clap_dir) as stub:
        env = _env(stub, tmp_path)
        r = _cli(runtime_python, "models", "fetch", "clap", "--models-dir", str(models), env=env)
        assert r.returncode == 0, r.stderr
        out = models / "clap-htsat-unfused"
        assert r.stdout.strip() == str(out)
        files = sorted(DEMO.glob("*.mp3"))
        r = _cli(
            runtime_python,
            "classify",
            *map(str, files),
            "--model",
            str(out),
            "--labels",
            ",".join(ANIMALS),
            "--json",
            env=env,
        )
        assert r.returncode == 0, r.stderr
    m = json.loads((out / "manifest.json").read_text())
    assert m["source"] == fetch.DEFAULT_REPO and m["source_revision"] == fetch.DEFAULT_REVISION
    assert m["logit_scale"] == pytest.approx(_ckpt_logit_scale(tiny_clap_dir), rel=1e-6)
    assert m["audio"]["output"] == "audio_embeds" and m["text"]["output"] == "text_embeds"
    assert m["audio"]["graph_rewrites"] and m["audio"]["optimized"] == {"audio_model.onnx": "audio_model.opt.onnx"}
    pipe = transformers.pipeline("zero-shot-audio-classification", model=str(tiny_clap_dir))
    seen = []
    for o, f in zip(json.loads(r.stdout), files):
        got = {s["label"]: s["score"] for s in o["scores"]}
        for item in pipe(demo_clips_48k[f.stem], candidate_labels=ANIMALS):
            assert abs(got[item["label"]] - item["score"]) < 1e-4, (f.name, item, got[item["label"]])
        seen.append([got[a] for a in ANIMALS])
    seen = np.array(seen)
    assert (seen.max(axis=1) - seen.min(axis=1)).min() > 0.05  # scores differ: the comparison can fail
    assert np.abs(seen - seen[0]).max() > 1e-2


# --------------------------------------------------------------------------------------
# what is fetched, and how
# --------------------------------------------------------------------------------------
def test_fetch_reads_the_checkpoint_by_ranges_only_and_verifies(hub, tiny_clap_dir, tmp_path):
    from monitor.files import sha256_file
    from monitor.models.clap.encoder import ClapBackend

    out = tmp_path / "m" / "clap-htsat-unfused"
    said: list[str] = []
    m = fetch.fetch_clap(out, say=said.append)
    ckpt = tiny_clap_dir / "model.safetensors"
    size = ckpt.stat().st_size
    cdn = f"/cdn/{sha256_file(ckpt)}"
    gets = [rng for meth, path, rng in hub.requests if path == cdn and meth == "GET"]
    assert gets and all(gets), gets  # every read of the checkpoint is ranged
    spans = [int(b) - int(a) + 1 for a, b in (g.split("=")[1].split("-") for g in gets)]
    assert len(spans) == 4 and sum(spans) < size / 20, (spans, size)  # length, header, two scalars
    # every file is listed with its sha256; downloads carry the hub's hashes
    listed = set(m["files"])
    assert listed == {p.name for p in out.iterdir()} - {"manifest.json"}
    for name, sha in m["files"].items():
        assert sha256_file(out / name) == sha
    assert m["fetched"]["files"]["audio_model.onnx"]["etag"] == m["files"]["audio_model.onnx"]
    assert not fetch.staging_dir(out).exists()
    assert any("MB" in s and "/s" in s for s in said)  # progress with size and rate
    b = ClapBackend.from_dir(out, threads=1)
    e = b.embed_audio(np.zeros((1, 48000 * 5), dtype=np.float32) + 0.01)
    assert e.shape == (1, m["embedding_dim"]) and abs(np.linalg.norm(e) - 1) < 1e-5
    # a second fetch does nothing
    before = (out / "audio_model.onnx").stat().st_mtime_ns
    n = len(hub.requests)
    said.clear()
    fetch.fetch_clap(out, say=said.append)
    assert said == [f"{fetch.DEFAULT_REPO} (fp32) already in {out}"] and len(hub.requests) == n
    assert (out / "audio_model.onnx").stat().st_mtime_ns == before


def test_fetched_graph_checked_at_load(hub, tmp_path):
    from monitor.errors import ModelError
    from monitor.models.clap.encoder import ClapBackend

    out = tmp_path / "clap"
    fetch.fetch_clap(out, say=None)
    m = json.loads((out / "manifest.json").read_text())
    m["audio"]["output"] = "last_hidden_state"  # exists, but is not [batch, dim]
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ModelError, match="does not fit manifest.json"):
        ClapBackend.from_dir(out, threads=1)


def test_int8_variant_and_rewrite_kept_only_when_equal(hub, tmp_path, monkeypatch):
    from monitor.models.clap.encoder import ClapBackend

    out = fetch.default_out(tmp_path / "models", "int8")
    m = fetch.fetch_clap(out, HubConfig(variant="int8"), say=None)
    assert out.name == "clap-htsat-unfused-int8" and m["audio"]["file"] == "audio_model_quantized.onnx"
    assert m["text"]["file"] == "text_model_quantized.onnx" and m["audio"]["quantized"]
    assert ClapBackend.from_dir(out, threads=1, int8=True).name.startswith("clap-htsat-unfused-int8@")
    # --int8 on an fp32 fetch: the project's own int8 quantisation, added in place
    out32 = fetch.default_out(tmp_path / "models")
    fetch.fetch_clap(out32, say=None)
    n = len(hub.requests)
    m8 = fetch.fetch_clap(out32, say=None, int8=True)
    assert len(hub.requests) == n  # nothing downloaded again
    assert m8["audio"]["int8_file"] == "audio_model.int8.onnx" and m8["int8"]["min_cosine"] > 0.95
    b32, b8 = ClapBackend.from_dir(out32, threads=1), ClapBackend.from_dir(out32, threads=1, int8=True)
    x = 0.1 * np.random.default_rng(1).standard_normal((2, 48000 * 5)).astype(np.float32)
    e32, e8 = b32.embed_audio(x), b8.embed_audio(x)
    assert np.sum(e32 * e8, axis=1).min() > 0.95 and np.abs(e32 - e8).max() > 0  # a different graph, close
    with pytest.raises(UserError, match="already int8"):
        fetch.fetch_clap(out, HubConfig(variant="int8"), say=None, int8=True)
    # a rewrite / optimised graph that does not reproduce the download is not used
    monkeypatch.setattr(fetch, "GRAPH_TOL", -1.0)
    out2 = tmp_path / "strict"
    m2 = fetch.fetch_clap(out2, say=None)
    assert m2["audio"]["optimized"] == {} and m2["audio"]["graph_rewrites"] == []
    assert sorted(p.name for p in out2.iterdir()) == sorted([*m2["files"], "manifest.json"])
    assert m2["audio"]["graph_checks"]["rewrite_max_abs_diff"] < 1e-5


def test_run_auto_with_empty_models_dir_fetches_clap(hub, tmp_path):
    models = tmp_path / "empty-models"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model:\n  spec: auto\n  models_dir: {models}\nlabels: [dog barking, rooster crowing]\n")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "monitor",
            "run",
            "--config",
            str(cfg),
            "--source",
            str(DEMO / "dog.mp3"),
            "--fast",
            "--no-tui",
            "--scores",
            str(tmp_path / "s.jsonl"),
        ],
        capture_output=True,
        text=True,
        env=_env(hub, tmp_path),
        timeout=600,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "auto: fetched CLAP (Xenova/clap-htsat-unfused@c28f2883, fp32)" in r.stderr, r.stderr
    assert (models / "clap-htsat-unfused" / "manifest.json").is_file()
    lines = [json.loads(x) for x in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert lines and set(lines[0]["scores"]) == {"dog barking", "rooster crowing"}
    # a second start: no network needed (the stub is gone: HF_ENDPOINT points at a closed port)
    env = _env(hub, tmp_path, HF_ENDPOINT="http://127.0.0.1:9")
    r2 = subprocess.run(
        [
            sys.executable,
            "-m",
            "monitor",
            "run",
            "--config",
            str(cfg),
            "--source",
            str(DEMO / "dog.mp3"),
            "--fast",
            "--no-tui",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=tmp_path,
    )
    assert r2.returncode == 0 and f"auto: using the CLAP in {models / 'clap-htsat-unfused'}" in r2.stderr, r2.stderr


# --------------------------------------------------------------------------------------
# failures: exit 2, one line, and a later fetch succeeds with nothing left over
# --------------------------------------------------------------------------------------
def _fetch_cli(stub: HubStub, tmp_path: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return _cli(sys.executable, "models", "fetch", "clap", "--out", str(out), *extra, env=_env(stub, tmp_path))


def _assert_whole(out: Path) -> None:
    m = json.loads((out / "manifest.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == sorted([*m["files"], "manifest.json"])
    assert not fetch.staging_dir(out).exists()


def test_server_dying_mid_file_then_resume(js_layout, tiny_clap_dir, tmp_path):
    out = tmp_path / "models" / "clap"
    size = (js_layout / AUDIO).stat().st_size
    with _stub(js_layout, tiny_clap_dir) as stub:
        stub.die_after[AUDIO] = size // 3
        r = _fetch_cli(stub, tmp_path, out)
    _one_line_error(r, "audio_model.onnx", "resume")
    assert not out.exists()
    part = fetch.staging_dir(out) / "audio_model.onnx.part"
    assert part.stat().st_size == size // 3
    with _stub(js_layout, tiny_clap_dir) as stub:  # the server is back (on another port)
        r = _fetch_cli(stub, tmp_path, out)
        assert r.returncode == 0, r.stderr
        assert "resuming at" in r.stderr
        ranges = [rng for meth, p, rng in stub.requests if meth == "GET" and p.startswith("/cdn/") and rng]
        assert f"bytes={size // 3}-" in ranges
    _assert_whole(out)
    assert (out / "audio_model.onnx").read_bytes() == (js_layout / AUDIO).read_bytes()


def test_missing_repo_revision_file_and_unreachable(js_layout, tiny_clap_dir, tmp_path):
    out = tmp_path / "clap"
    with _stub(js_layout, tiny_clap_dir) as stub:
        _one_line_error(
            _fetch_cli(stub, tmp_path, out, "--repo", "Xenova/no-such-model"),
            "repository Xenova/no-such-model not found",
        )
        _one_line_error(_fetch_cli(stub, tmp_path, out, "--revision", "0" * 40), f"revision {'0' * 40}", "not found")
        _one_line_error(
            _fetch_cli(stub, tmp_path, out, "--checkpoint-repo", "laion/nothing"), "laion/nothing not found"
        )
    broken = tmp_path / "broken-repo"
    shutil.copytree(js_layout, broken)
    (broken / "tokenizer.json").unlink()
    with _stub(broken, tiny_clap_dir) as stub:
        _one_line_error(_fetch_cli(stub, tmp_path, out), "tokenizer.json not found in Xenova/clap-htsat-unfused")
    dead = subprocess.run(
        [sys.executable, "-m", "monitor", "models", "fetch", "clap", "--out", str(out)],
        capture_output=True,
        text=True,
        env=dict(_env(stub, tmp_path), HF_ENDPOINT="http://127.0.0.1:9"),
        timeout=60,
    )
    _one_line_error(dead, "cannot be reached", "HF_ENDPOINT")
    assert not out.exists() and not fetch.staging_dir(out).exists()  # nothing to resume: nothing left
    with _stub(js_layout, tiny_clap_dir) as stub:
        assert _fetch_cli(stub, tmp_path, out).returncode == 0
    _assert_whole(out)


def test_corrupt_download_is_deleted_and_refetched(js_layout, tiny_clap_dir, tmp_path):
    out = tmp_path / "clap"
    with _stub(js_layout, tiny_clap_dir) as stub:
        stub.corrupt.add(TEXT)
        _one_line_error(_fetch_cli(stub, tmp_path, out), "text_model.onnx", "sha256 mismatch")
        assert not (fetch.staging_dir(out) / "text_model.onnx").exists() and not out.exists()
        stub.corrupt.clear()
        stub.corrupt.add("tokenizer.json")  # a small (git-hashed) file too
        _one_line_error(_fetch_cli(stub, tmp_path, out), "tokenizer.json", "git sha1 mismatch")
        stub.corrupt.clear()
        r = _fetch_cli(stub, tmp_path, out)
        assert r.returncode == 0, r.stderr
    _assert_whole(out)


def test_onnx_that_is_not_clap_is_refused(js_layout, tiny_clap_dir, tmp_path):
    wrong = tmp_path / "wrong-repo"
    shutil.copytree(js_layout, wrong)
    shutil.copy(js_layout / TEXT, wrong / AUDIO)  # a valid ONNX, of the wrong model
    out = tmp_path / "clap"
    with _stub(wrong, tiny_clap_dir) as stub:
        _one_line_error(_fetch_cli(stub, tmp_path, out), "audio_model.onnx is not a CLAP audio encoder", "input_ids")
    assert not out.exists()


@pytest.fixture
def tmpfs(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    size = 3 * 1024 * 1024
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs for the disk-full test ({r.stderr.strip() or 'not root'})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk(js_layout, tiny_clap_dir, tmp_path, tmpfs):
    audio = (js_layout / AUDIO).stat().st_size
    total = sum(p.stat().st_size for p in js_layout.rglob("*") if p.is_file() and "quantized" not in p.name)
    assert 2 * audio + total > 3 * 1024 * 1024 > total  # too small for downloads + optimised graph: refused up front
    out = tmpfs / "clap"
    with _stub(js_layout, tiny_clap_dir) as stub:
        _one_line_error(_fetch_cli(stub, tmp_path, out), "disk full", "MB free")
        assert _listing(tmpfs) == []
        # the disk fills up while the text encoder downloads (another program writes a big file)
        out2 = tmpfs / "int8"
        filler = tmpfs / "filler"
        text8 = "onnx/text_model_quantized.onnx"
        orig = stub._send

        def fill_then_send(h, f, head, rng, path, etag, commit):
            if path == text8 and not head and not filler.exists():
                free = shutil.disk_usage(tmpfs).free
                with open(filler, "wb") as fh:
                    fh.write(b"\0" * max(free - 4096, 0))
            return orig(h, f, head, rng, path, etag, commit)

        stub._send = fill_then_send
        r = _fetch_cli(stub, tmp_path, out2, "--variant", "int8")
        _one_line_error(r, "disk full", "text_model_quantized.onnx")
        assert not out2.exists()
        filler.unlink()
        stub._send = orig
        r = _fetch_cli(stub, tmp_path, out2, "--variant", "int8")
        assert r.returncode == 0, r.stderr
    _assert_whole(out2)
    assert _listing(tmpfs) == sorted(["int8", *[f"int8/{n}" for n in os.listdir(out2)]])


def test_models_list_and_check_config_show_hub_settings(hub, tmp_path):
    models = tmp_path / "models"
    fetch.fetch_clap(fetch.default_out(models), say=None)
    r = _cli(sys.executable, "models", "list", "--models-dir", str(models), env=_env(hub, tmp_path))
    assert r.returncode == 0 and f"clap:    preset htsat-unfused: {models / 'clap-htsat-unfused'} (ok" in r.stdout
    r = _cli(sys.executable, "check-config", str(ROOT / "config.yaml"), env=_env(hub, tmp_path))
    assert r.returncode == 0, r.stderr
    assert fetch.DEFAULT_REVISION in r.stdout and fetch.CHECKPOINT_REVISION in r.stdout
    assert math.isfinite(json.loads((models / "clap-htsat-unfused" / "manifest.json").read_text())["logit_scale"])


@pytest.mark.slow  # about 10-30 s: a whole model or a real device
def test_fetched_model_works_with_bench_and_enroll(hub, tmp_path):
    out = fetch.default_out(tmp_path / "models")
    fetch.fetch_clap(out, say=None, int8=True)
    env = _env(hub, tmp_path)
    r = _cli(sys.executable, "bench", "--model", str(out), "--repeats", "3", "--cpu-seconds", "4", env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    metrics = {json.loads(x)["metric"] for x in r.stdout.splitlines() if x.strip()}
    assert {"encoder_fp32_ms_per_window", "encoder_int8_ms_per_window"} <= metrics, sorted(metrics)
    r = _cli(sys.executable, "enroll", "rooster call", str(DEMO / "rooster.mp3"), "--model", str(out), env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert list((tmp_path / "state" / "prototypes").glob("*"))


# --------------------------------------------------------------------------------------
# presets (issue 31): each preset's pinned repositories, fetched like the default
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def larger_ckpt(tmp_path_factory) -> Path:
    from clap_factories import make_random_checkpoint

    return make_random_checkpoint(tmp_path_factory.mktemp("larger") / "ckpt", size="larger-tiny", seed=7)


@pytest.fixture(scope="session")
def larger_js(larger_ckpt, tmp_path_factory) -> Path:
    from clap_factories import make_transformersjs_layout

    return make_transformersjs_layout(larger_ckpt, tmp_path_factory.mktemp("xenova-larger") / "repo")


def _preset_stub(
    js_layout: Path, tiny_ckpt: Path, larger_js: Path, larger_ckpt: Path, presets=("larger-general",)
) -> HubStub:
    """The hub stand-in with the default preset's repositories and, at each of ``presets``'
    pins, the larger architecture's random checkpoint (larger-music-speech is the same
    architecture and layout as larger-general)."""
    from monitor.config import CLAP_PRESETS

    s = _stub(js_layout, tiny_ckpt)
    for name in presets:
        p = CLAP_PRESETS[name]
        s.add_repo(p["repo"], p["revision"], larger_js)
        s.add_repo(p["checkpoint_repo"], p["checkpoint_revision"], larger_ckpt)
    return s


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["larger-general", "larger-music-speech"])
def test_the_larger_presets_fetched_without_torch_equal_the_pipeline(
    preset, runtime_python, js_layout, tiny_clap_dir, larger_js, larger_ckpt, demo_clips_48k, tmp_path
):
    import transformers

    from monitor.config import CLAP_PRESETS

    models = tmp_path / "models"
    pins = CLAP_PRESETS[preset]
    with _preset_stub(js_layout, tiny_clap_dir, larger_js, larger_ckpt, presets=(preset,)) as stub:
        env = _env(stub, tmp_path)
        fetch_args = ("models", "fetch", "clap", "--preset", preset, "--models-dir", str(models))
        r = _cli(runtime_python, *fetch_args, env=env)
        assert r.returncode == 0, r.stderr
        out = models / f"clap-{preset}"
        assert r.stdout.strip() == str(out)
        assert f"resolving {pins['repo']}@{pins['revision'][:12]}" in r.stderr, r.stderr
        files = sorted(DEMO.glob("*.mp3"))[:4]
        args = ("classify", *map(str, files), "--model", str(out), "--labels", ",".join(ANIMALS), "--json")
        r = _cli(runtime_python, *args, env=env)
        assert r.returncode == 0, r.stderr
        listed = _cli(runtime_python, "models", "list", "--models-dir", str(models), env=env)
    m = json.loads((out / "manifest.json").read_text())
    assert (m["preset"], m["source"], m["source_revision"]) == (preset, pins["repo"], pins["revision"])
    assert m["logit_scale_from"]["repo"] == pins["checkpoint_repo"]
    assert m["logit_scale"] == pytest.approx(_ckpt_logit_scale(larger_ckpt), rel=1e-6)
    assert f"clap:    preset {preset}: {out} (ok" in listed.stdout, listed.stdout
    pipe = transformers.pipeline("zero-shot-audio-classification", model=str(larger_ckpt))
    for o, f in zip(json.loads(r.stdout), files):
        got = {s["label"]: s["score"] for s in o["scores"]}
        for item in pipe(demo_clips_48k[f.stem], candidate_labels=ANIMALS):
            assert abs(got[item["label"]] - item["score"]) < 1e-4, (f.name, item, got[item["label"]])


def test_run_auto_fetches_the_configured_preset(js_layout, tiny_clap_dir, larger_js, larger_ckpt, tmp_path):
    """A folder of the default preset is there; the config asks for larger-general: auto
    fetches that one and says so."""
    models = tmp_path / "models"
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"model: {{models_dir: {models}, hub: {{preset: larger-general}}}}\nlabels: [dog, cow]\n")
    with _preset_stub(js_layout, tiny_clap_dir, larger_js, larger_ckpt) as stub:
        env = _env(stub, tmp_path)
        r = _cli(sys.executable, "models", "fetch", "clap", "--models-dir", str(models), env=env)
        assert r.returncode == 0 and (models / "clap-htsat-unfused").is_dir(), r.stderr
        args = ("run", "--config", str(cfg), "--source", str(DEMO / "dog.mp3"), "--fast", "--no-tui")
        r = _cli(sys.executable, *args, "--model", "auto", "--web", "off", env=env)
        assert r.returncode == 0, r.stderr
        assert "auto: fetched CLAP (Xenova/larger_clap_general@d78c3994, fp32)" in r.stderr, r.stderr
        assert (models / "clap-larger-general" / "manifest.json").is_file()
        r = _cli(sys.executable, *args, "--model", "auto", "--web", "off", env=env)  # present now
        assert f"auto: using the CLAP in {models / 'clap-larger-general'} (preset larger-general)" in r.stderr


def test_a_bad_preset_is_one_line_and_exit_2(tmp_path):
    env = dict(os.environ, SOUND_MONITOR_STATE=str(tmp_path / "state"))
    r = _cli(sys.executable, "models", "fetch", "clap", "--preset", "huge", "--models-dir", str(tmp_path), env=env)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        "error: --preset 'huge': not a CLAP preset (presets: htsat-unfused, larger-general, larger-music-speech)"
    ]
    cfg = tmp_path / "config.yaml"
    cfg.write_text("model: {hub: {preset: huge}}\n")
    r = _cli(sys.executable, "check-config", str(cfg), env=env)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "unknown preset 'huge' (presets: htsat-unfused, larger-general, larger-music-speech)" in r.stderr


def test_run_auto_with_a_budget_says_what_it_chose_and_why(js_layout, tiny_clap_dir, larger_js, larger_ckpt, tmp_path):
    models = tmp_path / "models"
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"model: {{models_dir: {models}, cpu_budget_pct: 100}}\nlabels: [dog, cow]\n")
    with _preset_stub(js_layout, tiny_clap_dir, larger_js, larger_ckpt) as stub:
        args = ("run", "--config", str(cfg), "--source", str(DEMO / "dog.mp3"), "--fast", "--no-tui", "--web", "off")
        r = _cli(sys.executable, *args, "--model", "auto", env=_env(stub, tmp_path))
    assert r.returncode == 0, r.stderr
    # the whole machine at 100 %: the most accurate preset fits on any machine that runs tests
    assert "budget 100 %: larger-general, the most accurate that fits at a 1 s hop with the change gate" in r.stderr
    assert (models / "clap-larger-general" / "manifest.json").is_file()
