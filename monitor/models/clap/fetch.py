"""`models fetch clap`: the pre-exported CLAP ONNX from the hub, with no torch.

``Xenova/clap-htsat-unfused`` (the transformers.js conversion of laion/clap-htsat-unfused)
holds ``onnx/audio_model.onnx`` (input_features -> audio_embeds) and
``onnx/text_model.onnx`` (input_ids, attention_mask -> text_embeds), both not normalised,
``*_quantized.onnx`` int8 forms, and the tokenizer / preprocessor files at its root. This
module turns a pinned commit of it into an ordinary exported-model directory that
``ClapBackend.from_dir`` loads (``--model DIR`` for run, classify, eval, enroll, bench):

1. resolve every file at the pinned revision (fails early: repository, revision or file
   missing, hub unreachable) and check the disk has room;
2. read the learned ``logit_scale_a`` / ``logit_scale_t`` (not in the ONNX graphs) from the
   original checkpoint's ``model.safetensors`` by ranged reads of its header and of the two
   scalars -- a few kB instead of the 600 MB file;
3. download each file (progress, resumable, verified against the hub's hash) into a hidden
   staging folder next to the target;
4. introspect the graphs: names, ranks and dtypes of inputs and outputs must be what CLAP
   needs, and the outputs are run on test features / prompts;
5. the project's graph work on the audio graph (Resize -> constant MatMul, onnxruntime's
   EXTENDED optimised graph), each kept only when its embeddings equal the downloaded
   graph's within 1e-5 on test features;
6. manifest.json (source repo + revision, sha256 of every file, front-end parameters,
   embedding dim, logit scale) written last, then the staging folder is renamed to the
   target: a later start never finds half a model.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from monitor.config import DEFAULT_PRESET, HubConfig
from monitor.errors import ModelError, UserError
from monitor.files import sha256_file, verify_listed
from monitor.models import hub
from monitor.models.clap.frontend import ClapFrontend, FrontendParams
from monitor.models.clap.manifest import MANIFEST_VERSION, ClapManifest

_PINNED = HubConfig()  # the pinned repositories and commits live in the config's defaults
DEFAULT_REPO = _PINNED.repo
DEFAULT_REVISION = _PINNED.revision
CHECKPOINT_REPO = _PINNED.checkpoint_repo
CHECKPOINT_REVISION = _PINNED.checkpoint_revision
CHECKPOINT_FILE = "model.safetensors"
VARIANTS = {
    "fp32": ("onnx/audio_model.onnx", "onnx/text_model.onnx"),
    "int8": ("onnx/audio_model_quantized.onnx", "onnx/text_model_quantized.onnx"),
}
ROOT_FILES = ("config.json", "preprocessor_config.json", "tokenizer.json")
OPTIONAL_FILES = ("tokenizer_config.json",)
GRAPH_TOL = 1e-5  # rewritten / optimised audio graphs must give the downloaded graph's embeddings
SAFETENSORS_DTYPES = {"F32": "<f4", "F16": "<f2", "F64": "<f8"}

Say = Callable[[str], None]


def _say_stderr(msg: str) -> None:
    print(f"[fetch] {msg}", file=sys.stderr, flush=True)


def folder_name(preset: str = DEFAULT_PRESET, variant: str = "fp32") -> str:
    """``clap-htsat-unfused``, ``clap-larger-general-int8``, ...: a preset's folder."""
    return f"clap-{preset}" + ("" if variant == "fp32" else f"-{variant}")


def default_out(models_dir: str | os.PathLike, variant: str = "fp32", preset: str = DEFAULT_PRESET) -> Path:
    return Path(models_dir).expanduser() / folder_name(preset, variant)


def staging_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.fetching"


def present(out: Path, source: HubConfig) -> dict | None:
    """The manifest of a complete fetch of ``source`` in ``out`` (every file hashed), else None."""
    try:
        m = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(m, dict) or m.get("fetched") is None:
        return None
    f = m["fetched"]
    if (f.get("repo"), f.get("revision"), f.get("variant")) != (source.repo, source.revision, source.variant):
        return None
    files = m.get("files") or {}
    if not all((out / n).is_file() and (out / n).stat().st_size == s for n, s in (m.get("sizes") or {}).items()):
        return None
    if not files or verify_listed(out, m):  # every file hashed again: a damaged copy is no copy
        return None
    return m


# --------------------------------------------------------------------------------------
# logit scale: two scalars out of a 600 MB safetensors file, by ranged reads
# --------------------------------------------------------------------------------------
def read_safetensors_scalars(f: hub.RemoteFile, names: tuple[str, ...]) -> dict[str, float]:
    (n,) = struct.unpack("<Q", hub.read_range(f, 0, 8))
    if not 2 <= n <= 100_000_000:
        raise ModelError(f"{f.label} is not a safetensors file (header length {n})")
    try:
        header = json.loads(hub.read_range(f, 8, n))
    except ValueError:
        raise ModelError(f"{f.label}: unreadable safetensors header") from None
    out = {}
    for name in names:
        info = header.get(name)
        if not isinstance(info, dict):
            raise ModelError(f"{f.label} has no tensor {name}: not a CLAP checkpoint (set --checkpoint-repo)")
        dtype, shape, (a, b) = info.get("dtype"), info.get("shape"), info.get("data_offsets", (0, 0))
        if dtype not in SAFETENSORS_DTYPES or int(np.prod(shape or [1])) != 1:
            raise ModelError(f"{f.label}: {name} is {dtype} {shape}, expected one float")
        raw = hub.read_range(f, 8 + n + int(a), int(b) - int(a))
        out[name] = float(np.frombuffer(raw, dtype=SAFETENSORS_DTYPES[dtype])[0])
    return out


def logit_scales(source: HubConfig, say: Say) -> dict:
    f = hub.file_info(source.checkpoint_repo, source.checkpoint_revision, CHECKPOINT_FILE)
    say(
        f"reading the logit scale from {source.checkpoint_repo}/{CHECKPOINT_FILE} "
        f"({(f.size or 0) / 1e6:.0f} MB file; a few kB by ranged reads)"
    )
    v = read_safetensors_scalars(f, ("logit_scale_a", "logit_scale_t"))
    if not all(np.isfinite(x) and abs(x) < 20 for x in v.values()):
        raise ModelError(f"{f.label}: implausible logit scales {v}")
    return {
        "logit_scale": float(np.exp(v["logit_scale_a"])),
        "logit_scale_text": float(np.exp(v["logit_scale_t"])),
        "repo": source.checkpoint_repo,
        "revision": f.commit or source.checkpoint_revision,
        "file": CHECKPOINT_FILE,
        "tensors": ["logit_scale_a", "logit_scale_t"],
    }


# --------------------------------------------------------------------------------------
# what the downloaded files say
# --------------------------------------------------------------------------------------
def frontend_params(pre: dict) -> FrontendParams:
    """Front-end parameters from a ``preprocessor_config.json`` (ClapFeatureExtractor)."""
    if pre.get("feature_extractor_type", "ClapFeatureExtractor") != "ClapFeatureExtractor":
        raise ModelError(
            f"preprocessor_config.json is for {pre.get('feature_extractor_type')}, not ClapFeatureExtractor"
        )
    if pre.get("top_db") is not None:
        raise ModelError(f"preprocessor_config.json: top_db={pre['top_db']} is not supported (CLAP uses none)")
    try:
        return FrontendParams(
            sample_rate_hz=int(pre.get("sampling_rate", 48000)),
            n_fft=int(pre.get("fft_window_size", pre.get("n_fft", 1024))),
            hop_length=int(pre.get("hop_length", 480)),
            n_mels=int(pre.get("feature_size", 64)),
            f_min_hz=float(pre.get("frequency_min", 50)),
            f_max_hz=float(pre.get("frequency_max", 14000)),
            max_length_s=float(pre.get("max_length_s", 10)),
            padding=str(pre.get("padding", "repeatpad")),
        )
    except (TypeError, ValueError) as e:
        raise ModelError(f"preprocessor_config.json is invalid: {e}") from None


def text_params(config: dict, tok_config: dict | None, tokenizer_path: Path) -> tuple[int, int]:
    """(pad_token_id, max_tokens) from config.json / tokenizer_config.json / tokenizer.json."""
    tc = config.get("text_config") or {}
    pad = tc.get("pad_token_id")
    if pad is None:
        from tokenizers import Tokenizer

        pad = Tokenizer.from_file(str(tokenizer_path)).token_to_id("<pad>")
    if pad is None:
        raise ModelError("cannot tell the text encoder's padding token (no pad_token_id, no <pad> in tokenizer.json)")
    limits = [int(tc.get("max_position_embeddings", 514)) - 2]
    mml = (tok_config or {}).get("model_max_length")
    if isinstance(mml, (int, float)) and 0 < mml < 1e6:
        limits.append(int(mml))
    return int(pad), max(1, min(limits))


def _dims_fit(shape, want) -> bool:
    return len(shape) == len(want) and all(w is None or not isinstance(d, int) or d == w for d, w in zip(shape, want))


def _pick_output(outputs, preferred: str, what: str, path: Path) -> str:
    names = [o.name for o in outputs]
    if preferred in names:
        o = outputs[names.index(preferred)]
        if len(o.shape) != 2:
            raise ModelError(f"{path.name}: output {preferred} has shape {o.shape}, expected [batch, dim]")
        return preferred
    two_d = [o.name for o in outputs if len(o.shape) == 2]
    if len(two_d) == 1:
        return two_d[0]
    raise ModelError(
        f"{path.name} has no {what} output ({preferred} or a single [batch, dim] output); outputs: {names}"
    )


def inspect_audio(session, path: Path, n_frames: int, n_mels: int) -> tuple[str, str]:
    ins = session.get_inputs()
    if len(ins) != 1 or ins[0].type != "tensor(float)" or not _dims_fit(ins[0].shape, [None, 1, n_frames, n_mels]):
        got = [(i.name, i.type, i.shape) for i in ins]
        raise ModelError(
            f"{path.name} is not a CLAP audio encoder: inputs {got}, expected one float "
            f"[batch, 1, {n_frames}, {n_mels}] (log-mel features)"
        )
    return ins[0].name, _pick_output(session.get_outputs(), "audio_embeds", "audio embedding", path)


def inspect_text(session, path: Path) -> str:
    ins = {i.name: i for i in session.get_inputs()}
    ok = set(ins) == {"input_ids", "attention_mask"} and all(
        i.type == "tensor(int64)" and len(i.shape) == 2 for i in ins.values()
    )
    if not ok:
        got = [(i.name, i.type, i.shape) for i in ins.values()]
        raise ModelError(
            f"{path.name} is not a CLAP text encoder: inputs {got}, expected int64 input_ids and "
            "attention_mask [prompts, tokens]"
        )
    return _pick_output(session.get_outputs(), "text_embeds", "text embedding", path)


def _test_features(fe: ClapFrontend, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    sr = fe.sample_rate_hz
    t = np.arange(5 * sr) / sr
    clips = [0.1 * rng.standard_normal(5 * sr), 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(5 * sr)]
    return np.concatenate([fe.features(c.astype(np.float32)) for c in clips], axis=0)


# --------------------------------------------------------------------------------------
# the fetch
# --------------------------------------------------------------------------------------
def fetch_clap(
    out: str | os.PathLike,
    source: HubConfig = _PINNED,
    say: Say | None = _say_stderr,
    threads: int = 2,
    int8: bool = False,
) -> dict:
    """Fetch ``source`` into ``out`` (no-op when already complete); returns the manifest.

    ``int8`` (fp32 variant): also quantise the audio encoder here with the project's own
    int8 quantisation (``export --int8``'s), for ``model.int8: true``."""
    say = say or (lambda _m: None)
    out = Path(out).expanduser()
    if int8 and source.variant != "fp32":
        raise UserError("--int8 quantises the fp32 audio encoder locally; with --variant int8 it is already int8")
    done = present(out, source)
    if done is not None and (not int8 or done["audio"].get("int8_file")):
        say(f"{source.repo} ({source.variant}) already in {out}")
        return done
    if done is not None:  # fetched without --int8 before: add the local int8 encoder in place
        return _add_int8(out, done, say, threads)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        try:
            old = json.loads((out / "manifest.json").read_text())
            problems = verify_listed(out, old) if isinstance(old, dict) else []
        except (OSError, ValueError):
            problems = []
        if problems:
            raise UserError(f"{out} is damaged ({'; '.join(problems[:3])}): remove it and fetch again")
        raise UserError(
            f"{out} exists and is not a fetch of {source.repo}@{source.revision[:12]} ({source.variant}); "
            "remove it or choose another --out"
        )
    if not hub.reachable():
        raise ModelError(
            f"the Hugging Face Hub at {hub.endpoint()} cannot be reached (set HF_ENDPOINT for a mirror, "
            "or fetch on another machine with --out and copy the folder)"
        )
    stage = staging_dir(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        stage.mkdir(exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {stage}: {e.strerror or e}") from None
    try:
        m = _fetch(out, stage, source, say, threads)
    finally:
        if stage.is_dir() and not any(stage.iterdir()):
            stage.rmdir()  # nothing to resume: leave nothing behind
    return _add_int8(out, m, say, threads) if int8 else m


def _add_int8(out: Path, m: dict, say: Say, threads: int) -> dict:
    """Quantise the fetched fp32 audio encoder to int8 as ``export --int8`` does (int8 weights,
    the Resize matrix kept fp32), check it against fp32 and list it in the manifest."""
    from monitor.models.clap import graph

    audio = m["audio"]
    src = out / audio["file"]
    dst = out / "audio_model.int8.onnx"
    a_in, a_out = audio["input"], audio["output"]
    fe = ClapFrontend(FrontendParams.from_dict(m["frontend"]))
    feats = _test_features(fe)
    say("quantising the audio encoder to int8 here (the project's dynamic int8) ...")
    tmp = out / ".audio_model.rewritten.onnx"
    try:
        base = src
        if audio.get("graph_rewrites"):
            graph.resize_as_matmul(src, feats, threads, dst=tmp)
            base = tmp
        graph.quantise_dynamic_int8(base, dst, exclude=audio.get("graph_rewrites") or [])
    except OSError as e:
        dst.unlink(missing_ok=True)
        raise ModelError(f"cannot write {dst}: {e.strerror or e}") from None
    finally:
        tmp.unlink(missing_ok=True)
    graph.check_model(dst)
    a32 = graph.embeddings(graph.ort_session(src, threads), feats, a_in, a_out)
    a8 = graph.embeddings(graph.ort_session(dst, threads), feats, a_in, a_out)
    cos = float(np.sum(a8 * a32, axis=1).min())
    if not cos > 0.95:
        dst.unlink(missing_ok=True)
        raise ModelError(f"the int8 audio encoder disagrees with fp32 (cosine {cos:.4f}); not used")
    say(f"int8 vs fp32: min cosine {cos:.4f}")
    audio["int8_file"] = dst.name
    m["int8"] = {
        "file": dst.name,
        "method": "onnxruntime.quantization.quantize_dynamic QInt8, per channel, 7-bit (reduce_range, local)",
        "min_cosine": cos,
        "max_abs_diff": float(np.abs(a8 - a32).max()),
    }
    m["files"][dst.name] = sha256_file(dst)
    m["sizes"][dst.name] = dst.stat().st_size
    return ClapManifest.from_dict(m, out / "manifest.json").write(out, known=m["files"]).to_dict()


def _fetch(out: Path, stage: Path, source: HubConfig, say: Say, threads: int) -> dict:
    t0 = time.monotonic()
    audio_path, text_path = VARIANTS[source.variant]
    wanted = [audio_path, text_path, *ROOT_FILES]
    say(f"resolving {source.repo}@{source.revision[:12]} ({source.variant}) on {hub.endpoint()}")
    remote = {p: hub.file_info(source.repo, source.revision, p) for p in wanted}
    for p in OPTIONAL_FILES:
        try:
            remote[p] = hub.file_info(source.repo, source.revision, p)
        except ModelError as e:
            if "not found in" not in str(e):
                raise
    commit = next(iter(remote.values())).commit or source.revision
    if len(source.revision) == 40 and commit and commit != source.revision:
        raise ModelError(
            f"the hub resolved {source.repo}@{source.revision} to commit {commit}: not the pinned revision"
        )
    scales = logit_scales(source, say)
    local = {p: stage / Path(p).name for p in remote}
    need = sum((r.size or 0) for p, r in remote.items() if not local[p].is_file())
    need_all = need + (remote[audio_path].size or 0)  # + the optimised audio graph written next to it
    try:
        free = shutil.disk_usage(stage).free
    except OSError:
        free = None
    if free is not None and need_all > free:
        raise ModelError(
            f"disk full: fetching CLAP ({source.variant}) needs {need_all / 1e6:.1f} MB in {out.parent}, "
            f"{free / 1e6:.1f} MB free (free space, or --out elsewhere; --variant int8 is smaller)"
        )
    say(
        f"{len(remote)} files, {sum(r.size or 0 for r in remote.values()) / 1e6:.1f} MB "
        f"({need / 1e6:.1f} MB still to download) into {out}"
    )
    downloads = {}
    for i, (p, r) in enumerate(remote.items(), 1):
        dest = local[p]
        sha = None
        if dest.is_file():  # from an interrupted earlier fetch: used only if it still verifies
            try:
                sha = hub.verify(dest, r)
            except ModelError:
                dest.unlink(missing_ok=True)
        if sha is None:
            say(f"[{i}/{len(remote)}] {p}")
            sha = hub.download(r, dest, say)
        downloads[dest.name] = {"path": p, "size": dest.stat().st_size, "sha256": sha, "etag": r.etag}

    manifest = _build(stage, source, commit, local, downloads, scales, threads, say)
    try:
        manifest = (
            ClapManifest.from_dict(manifest, stage / "manifest.json").write(stage, known=manifest["files"]).to_dict()
        )
        if out.is_dir():
            out.rmdir()  # empty (checked above)
        os.replace(stage, out)  # the model appears whole, or not at all
    except OSError as e:
        (stage / "manifest.json").unlink(missing_ok=True)
        raise ModelError(f"cannot finish {out}: {e.strerror or e}") from None
    say(f"CLAP ({source.variant}) ready in {out} ({time.monotonic() - t0:.0f} s)")
    return manifest


def _json(path: Path | None) -> dict | None:
    if path is None or not path.is_file():
        return None
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelError(f"{path.name} from the hub is unreadable: {e}") from None
    if not isinstance(d, dict):
        raise ModelError(f"{path.name} from the hub is not a JSON object")
    return d


def _build(
    stage: Path,
    source: HubConfig,
    commit: str,
    local: dict[str, Path],
    downloads: dict,
    scales: dict,
    threads: int,
    say: Say,
) -> dict:
    from monitor.models.clap import graph
    from monitor.models.clap.text import PromptTokenizer

    audio_path, text_path = (local[p] for p in VARIANTS[source.variant])
    config = _json(local["config.json"]) or {}
    fe_params = frontend_params(_json(local["preprocessor_config.json"]) or {})
    fe = ClapFrontend(fe_params)
    pad_id, max_tokens = text_params(config, _json(local.get("tokenizer_config.json")), local["tokenizer.json"])

    say("checking the graphs (inputs, outputs, a test run) ...")
    try:
        sa = graph.ort_session(audio_path, threads)
        st = graph.ort_session(text_path, threads)
    except Exception as e:  # noqa: BLE001 - onnxruntime's own exception types
        raise ModelError(f"onnxruntime cannot load the downloaded graphs: {str(e).splitlines()[0][:200]}") from None
    a_in, a_out = inspect_audio(sa, audio_path, fe.n_frames, fe_params.n_mels)
    t_out = inspect_text(st, text_path)
    feats = _test_features(fe)
    a_ref = graph.embeddings(sa, feats, a_in, a_out)
    tok = PromptTokenizer(local["tokenizer.json"], pad_id, max_tokens)
    tb = tok(["This is a sound of a dog barking.", "This is a sound of rain.", "silence"])
    t_emb = st.run([t_out], {"input_ids": tb.input_ids, "attention_mask": tb.attention_mask})[0]
    if t_emb.ndim != 2 or a_ref.shape[1] != t_emb.shape[1] or a_ref.shape[0] != feats.shape[0]:
        raise ModelError(f"audio embeddings {list(a_ref.shape)} and text embeddings {list(t_emb.shape)} do not match")
    if not (np.isfinite(a_ref).all() and np.isfinite(t_emb).all()):
        raise ModelError("the downloaded graphs give NaN/Inf embeddings on test input")
    del sa, st

    # the project's graph work, each step kept only when it gives the downloaded graph's embeddings
    rewritten_path = stage / (audio_path.stem + ".rewritten.onnx")
    opt_path = stage / (audio_path.stem + ".opt.onnx")
    rewrites: list[str] = []
    check = {}
    base = audio_path
    say("graph work on the audio encoder (Resize -> MatMul, onnxruntime optimised graph) ...")
    try:
        rewrites = graph.resize_as_matmul(audio_path, feats, threads, dst=rewritten_path)
    except Exception as e:  # noqa: BLE001 - a graph we cannot rewrite is used as downloaded
        say(f"Resize rewrite not applied ({type(e).__name__}: {str(e)[:120]})")
    if rewrites:
        got = graph.embeddings(graph.ort_session(rewritten_path, threads), feats, a_in, a_out)
        check["rewrite_max_abs_diff"] = float(np.abs(got - a_ref).max())
        if check["rewrite_max_abs_diff"] <= GRAPH_TOL:
            base = rewritten_path
            say(
                f"time-axis Resize rewritten as a constant MatMul ({len(rewrites)} node, "
                f"max |diff| {check['rewrite_max_abs_diff']:.1e})"
            )
        else:
            say(f"Resize rewrite differs by {check['rewrite_max_abs_diff']:.1e} (> {GRAPH_TOL:.0e}): not used")
            rewrites = []
    try:
        opt_diff = graph.save_optimised(
            base, opt_path, feats, a_ref, threads, say, input_name=a_in, output_name=a_out, tol=GRAPH_TOL
        )
    except Exception as e:  # noqa: BLE001 - onnxruntime reports a failed write as its own exception
        opt_path.unlink(missing_ok=True)
        if isinstance(e, OSError) and hub.is_disk_full(e) or "space" in str(e).lower():
            raise ModelError(f"disk full while saving {opt_path.name} in {stage}; free space and fetch again") from None
        say(f"optimised graph not saved ({type(e).__name__}: {str(e)[:120]})")
        opt_diff = None
    rewritten_path.unlink(missing_ok=True)
    optimised = {}
    if opt_diff is not None:
        optimised[audio_path.name] = opt_path.name
        check["optimised_max_abs_diff"] = opt_diff
    elif rewrites:
        rewrites = []  # the rewrite lived only in the optimised graph that was not kept

    files = sorted(p.name for p in stage.iterdir() if p.is_file() and not p.name.startswith(("manifest", ".")))
    extra = set(files) - set(downloads) - set(optimised.values())
    for name in extra:  # nothing but what the manifest describes
        (stage / name).unlink()
    files = [f for f in files if f not in extra]
    say("hashing files ...")
    hashes = {n: (downloads[n]["sha256"] if n in downloads else sha256_file(stage / n)) for n in files}
    int8 = source.variant == "int8"
    return {
        "kind": "clap",
        "format_version": MANIFEST_VERSION,
        "source": source.repo,
        "source_revision": commit,
        "name": folder_name(source.preset, source.variant),
        "preset": source.preset,
        "fetched": {
            "repo": source.repo,
            "revision": source.revision,
            "variant": source.variant,
            "endpoint": hub.endpoint(),
            "files": downloads,
        },
        "sample_rate": fe_params.sample_rate_hz,
        "window_s": 5.0,
        "embedding_dim": int(a_ref.shape[1]),
        "logit_scale": scales["logit_scale"],
        "logit_scale_text": scales["logit_scale_text"],
        "logit_scale_from": {k: scales[k] for k in ("repo", "revision", "file", "tensors")},
        "audio": {
            "file": audio_path.name,
            "int8_file": audio_path.name if int8 else None,
            "optimized": optimised,
            "graph_rewrites": rewrites,
            "graph_checks": check,
            "input": a_in,
            "input_shape": ["batch", 1, fe.n_frames, fe_params.n_mels],
            "input_dtype": "float32",
            "output": a_out,
            "normalised": False,
            "quantized": int8,
        },
        "text": {
            "file": text_path.name,
            "inputs": ["input_ids", "attention_mask"],
            "input_shape": ["prompts", "tokens"],
            "input_dtype": "int64",
            "output": t_out,
            "normalised": False,
            "quantized": int8,
            "tokenizer": "tokenizer.json",
            "pad_token_id": pad_id,
            "max_tokens": max_tokens,
        },
        "frontend": fe_params.to_dict(),
        "files": hashes,
        "sizes": {n: (stage / n).stat().st_size for n in files},
    }
