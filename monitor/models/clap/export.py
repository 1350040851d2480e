"""Export a CLAP checkpoint (Hugging Face format) to ONNX, and check the result.

Everything here needs the ``export`` extra (torch, transformers, onnx, onnxscript); those
modules are imported inside the functions, never at import time, so the runtime never
pulls them in. The runtime side is ``monitor.models.clap.encoder`` (onnxruntime + numpy only).

Output directory layout::

    audio_encoder.onnx        input_features float32 [B, 1, 1001, 64] -> audio_embeds [B, D] (L2-normalised)
    audio_encoder.int8.onnx   (with --int8) dynamically quantised copy of the audio encoder
    audio_encoder*.opt.onnx   the same graphs as optimised by onnxruntime (EXTENDED level),
                              checked against the originals; the runtime loads these first
    text_encoder.onnx         input_ids, attention_mask int64 [P, T] -> text_embeds [P, D] (L2-normalised)
    tokenizer.json, ...       the checkpoint's tokenizer (read at runtime with `tokenizers`)
    manifest.json             source, shapes, logit scale, front-end parameters, sha256 of every
                              file, measured max |onnx - torch| differences

Random checkpoints for tests and benchmarks (the Hub is not reachable on the build
machines) are made by ``scripts/clap_factories.py``, outside the runtime package.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from monitor.errors import ModelError, UserError
from monitor.models.clap.frontend import FrontendParams
from monitor.models.clap.graph import check_model, ort_session, quantise_dynamic_int8, resize_as_matmul, save_optimised
from monitor.models.clap.manifest import MANIFEST_VERSION, ClapManifest

log = logging.getLogger(__name__)

DEFAULT_SOURCE = "laion/clap-htsat-unfused"
AUDIO_FILE = "audio_encoder.onnx"
AUDIO_INT8_FILE = "audio_encoder.int8.onnx"
AUDIO_OPT_FILE = "audio_encoder.opt.onnx"  # onnxruntime-optimised (EXTENDED) copies, loaded first
AUDIO_INT8_OPT_FILE = "audio_encoder.int8.opt.onnx"
TEXT_FILE = "text_encoder.onnx"
OPSET = 17

Progress = Callable[[str], None]


def _stderr_progress(msg: str) -> None:
    print(f"[export] {msg}", file=sys.stderr, flush=True)


def _need_export_deps() -> None:
    missing = []
    for mod in ("torch", "transformers", "onnx"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise UserError(
            f"export needs {', '.join(missing)}: install the export extra "
            "(pip install torch==2.13.0 'sound-monitor[export]')"
        )


# --------------------------------------------------------------------------------------
# source resolution
# --------------------------------------------------------------------------------------
def how_to_get(src: str) -> str:
    return (
        f"on a machine with internet run `huggingface-cli download {src} --local-dir DIR` "
        f"(or `hf download {src} --local-dir DIR`), copy DIR here and pass `--model DIR`"
    )


def resolve_source(src: str, patterns: list[str] | None = None) -> tuple[Path, str]:
    """A local Hugging Face directory, or a hub id downloaded into the HF cache.

    Returns (directory, revision or "local"). Raises ModelError with instructions when the
    hub cannot be reached and no local copy exists.
    """
    p = Path(src).expanduser()
    if p.exists():
        if not p.is_dir():
            raise ModelError(f"--model {src}: expected a Hugging Face model directory, got a file")
        if not (p / "config.json").is_file():
            raise ModelError(f"--model {src}: no config.json, not a Hugging Face model directory")
        return p, "local"
    if src.startswith((".", "/", "~")) or src.count("/") != 1:
        raise ModelError(f"--model {src}: no such directory, and not a Hugging Face id (owner/name)")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ModelError(f"cannot download {src}: huggingface_hub is missing; {how_to_get(src)}") from None
    patterns = patterns or ["*.json", "*.txt", "*.safetensors", "*.model", "merges.txt", "vocab.json"]
    d = from_hub(lambda **k: snapshot_download(src, allow_patterns=patterns, **k), src, how_to_get(src))
    return d, _revision_of(d)


def from_hub(fetch: Callable[..., str], what: str, how: str, download_timeout_s: int = 30) -> Path:
    """The path ``fetch(local_files_only=...)`` returns (a huggingface_hub download): from
    the local cache first, which works offline, else from the hub with short timeouts. Any
    hub failure (network, auth, a missing repo or file) is one ModelError naming ``what``
    and saying ``how`` to get it another way."""
    try:
        return Path(fetch(local_files_only=True))
    except Exception:  # noqa: BLE001 - any failure means "not cached"; try the network next
        pass
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", str(download_timeout_s))
    try:
        return Path(fetch(local_files_only=False))
    except Exception as e:  # noqa: BLE001 - network, auth, missing repo: all one message
        reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise ModelError(f"cannot get {what} from the Hugging Face Hub ({type(e).__name__}: {reason}); {how}") from None


def _revision_of(d: Path) -> str:
    # snapshot dirs are named by commit hash
    name = d.name
    return name if len(name) == 40 and all(c in "0123456789abcdef" for c in name) else "cached"


def _features_of(out) -> Any:
    # transformers 5.x returns a model-output object from get_*_features
    return out if hasattr(out, "shape") else out.pooler_output


def normalised_encoder(module, embed: Callable[..., Any]):
    """A torch module whose output is ``embed(module, *inputs)`` L2-normalised along the
    last axis: what every exported encoder returns (both model families, both towers)."""
    import torch

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = module

        def forward(self, *inputs):
            e = embed(self.m, *inputs)
            return e / e.norm(p=2, dim=-1, keepdim=True)

    return Encoder().eval()


def _wrappers(model):
    audio = normalised_encoder(model, lambda m, f: _features_of(m.get_audio_features(input_features=f)))
    text = normalised_encoder(
        model, lambda m, ids, mask: _features_of(m.get_text_features(input_ids=ids, attention_mask=mask))
    )
    return audio, text


def onnx_export(module, args: tuple, path: Path, input_names, output_names, dynamic_axes) -> str:
    """TorchScript-based export (deterministic, dynamic batch); returns the exporter used."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
            external_data=False,
        )
    return f"torch.onnx.export(dynamo=False) torch {torch.__version__} opset {OPSET}"


def _test_inputs(fe_params: FrontendParams, tokenizer, seed: int = 0):
    """Realistic test inputs: features of two noise clips (5 s and 10 s) and padded prompts."""
    from monitor.models.clap.frontend import ClapFrontend

    rng = np.random.default_rng(seed)
    sr = fe_params.sample_rate_hz
    fe = ClapFrontend(fe_params)
    clips = [
        0.1 * rng.standard_normal(5 * sr).astype(np.float32),
        0.3 * rng.standard_normal(10 * sr).astype(np.float32),
    ]
    feats = np.concatenate([fe.features(c) for c in clips], axis=0)
    prompts = ["This is a sound of a dog barking.", "This is a sound of rain.", "silence"]
    enc = tokenizer(prompts, padding=True, return_tensors="np")
    return feats, enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)


def frontend_params_from(src_dir: Path) -> FrontendParams:
    """Front-end parameters of the checkpoint's ClapFeatureExtractor (unfused: rand_trunc).

    Read through transformers, which understands both ``preprocessor_config.json`` (hub
    checkpoints) and the nested ``processor_config.json`` that transformers 5 writes.
    """
    from transformers import ClapFeatureExtractor

    try:
        fe = ClapFeatureExtractor.from_pretrained(str(src_dir))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelError(f"cannot load the feature extractor of {src_dir}: {str(e).splitlines()[0]}") from None
    if fe.truncation != "rand_trunc":
        # the fused front-end stacks 4 random mel views: not what an unfused model takes
        log.warning(
            "feature extractor truncation=%r; the runtime computes unfused (rand_trunc) features", fe.truncation
        )
    if fe.top_db is not None:
        raise ModelError(f"feature extractor top_db={fe.top_db} is not supported (the CLAP checkpoints use None)")
    return FrontendParams(
        sample_rate_hz=int(fe.sampling_rate),
        n_fft=int(fe.fft_window_size),
        hop_length=int(fe.hop_length),
        n_mels=int(fe.feature_size),
        f_min_hz=float(fe.frequency_min),
        f_max_hz=float(fe.frequency_max),
        max_length_s=float(fe.max_length_s),
        padding=str(fe.padding),
    )


def _clear_earlier_export(out: Path, say: Progress, remove: bool = True) -> None:
    """``out`` must be new, empty, or an earlier export (whose files are removed, so that the
    manifest hashes exactly what this export writes, never unrelated files)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    entries = [p for p in out.iterdir() if not p.name.startswith(".")]
    if not entries:
        return
    mpath = out / "manifest.json"
    try:
        old = json.loads(mpath.read_text()) if mpath.is_file() else None
    except (OSError, ValueError):
        old = None
    if not isinstance(old, dict) or old.get("kind", "clap") != "clap":
        raise UserError(
            f"--out {out} is not empty and holds no earlier export: choose a new or empty folder (nothing was written)"
        )
    listed = set(old.get("files") or {}) | {"manifest.json", "int8-choice.json"}  # + model.int8: auto's record
    unknown = sorted(p.name for p in entries if p.name not in listed)
    if unknown:
        raise UserError(
            f"--out {out} holds files that are not part of its earlier export ({', '.join(unknown[:3])}): "
            "choose a new or empty folder (nothing was written)"
        )
    if not remove:
        return
    say(f"replacing the earlier export in {out}")
    for p in entries:
        p.unlink()


def export_clap(
    src: str = DEFAULT_SOURCE,
    out_dir: str | os.PathLike = "models/clap-htsat-unfused",
    int8: bool = False,
    progress: Progress | None = _stderr_progress,
    threads: int = 2,
) -> dict:
    """Export ``src`` (hub id or local HF dir) into ``out_dir``; returns the manifest."""
    _need_export_deps()
    say = progress or (lambda _m: None)
    out = Path(out_dir).expanduser()
    _clear_earlier_export(out, say, remove=False)  # refuse a folder of other files before anything else
    src_dir, revision = resolve_source(src)
    _clear_earlier_export(out, say)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create output directory {out}: {e}") from None

    import torch
    from transformers import AutoTokenizer, ClapModel

    if torch.get_num_threads() > threads:
        torch.set_num_threads(threads)
    say(f"loading {src} ...")
    t0 = time.perf_counter()
    try:
        model = ClapModel.from_pretrained(str(src_dir)).eval()
        tokenizer = AutoTokenizer.from_pretrained(str(src_dir))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelError(f"cannot load a CLAP model from {src_dir}: {str(e).splitlines()[0]}") from None
    if getattr(model.config.audio_config, "enable_fusion", False):
        raise ModelError(
            f"{src} is a fused CLAP (enable_fusion=True); use an unfused checkpoint such as {DEFAULT_SOURCE}"
        )
    fe_params = frontend_params_from(src_dir)
    say(f"loaded in {time.perf_counter() - t0:.1f} s")

    audio, text = _wrappers(model)
    feats, ids, mask = _test_inputs(fe_params, tokenizer)
    parts = write_encoders(out, audio, text, feats, ids, mask, int8, threads, say)

    say("saving the tokenizer ...")
    tokenizer.save_pretrained(str(out))
    if not (out / "tokenizer.json").is_file():
        raise ModelError(f"the tokenizer of {src} has no fast (tokenizer.json) form; cannot export it")

    manifest = {
        "kind": "clap",
        "format_version": MANIFEST_VERSION,
        "source": src,
        "source_revision": revision,
        "name": Path(src.rstrip("/")).name if Path(src).exists() else src.split("/")[-1],
        "sample_rate": fe_params.sample_rate_hz,
        "window_s": 5.0,
        "embedding_dim": parts["embedding_dim"],
        "logit_scale": float(model.logit_scale_a.exp().item()),
        "logit_scale_text": float(model.logit_scale_t.exp().item()),
        "audio": parts["audio"],
        "text": {
            **parts["text"],
            "tokenizer": "tokenizer.json",
            "pad_token_id": int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 1),
            "max_tokens": int(min(getattr(model.config.text_config, "max_position_embeddings", 514) - 2, 512)),
        },
        "frontend": fe_params.to_dict(),
        "max_abs_diff": parts["max_abs_diff"],
        "int8": parts["int8"],
        "exporter": parts["exporter"],
    }
    return write_manifest(out, manifest, say)


def write_encoders(out: Path, audio, text, feats, ids, mask, int8: bool, threads: int, say: Progress) -> dict:
    """Export the audio (``input_features`` -> ``audio_embeds``) and text (``input_ids``,
    ``attention_mask`` -> ``text_embeds``) modules into ``out``, check them (onnx.checker,
    onnxruntime vs torch on the test inputs, a batch of one and shorter token rows), then the
    optional int8 copy and the onnxruntime-optimised graphs. Returns the manifest's parts.
    Shared by every model family's export."""
    import torch

    n_frames, n_mels = feats.shape[2], feats.shape[3]
    say("exporting the audio encoder ...")
    audio_path = out / AUDIO_FILE
    exporter = onnx_export(
        audio,
        (torch.from_numpy(feats),),
        audio_path,
        ["input_features"],
        ["audio_embeds"],
        {"input_features": {0: "batch"}, "audio_embeds": {0: "batch"}},
    )
    rewritten = resize_as_matmul(audio_path, feats, threads)
    if rewritten:
        say(f"time-axis Resize rewritten as a constant MatMul ({len(rewritten)} node)")
    say("exporting the text encoder ...")
    text_path = out / TEXT_FILE
    onnx_export(
        text,
        (torch.from_numpy(ids), torch.from_numpy(mask)),
        text_path,
        ["input_ids", "attention_mask"],
        ["text_embeds"],
        {
            "input_ids": {0: "prompts", 1: "tokens"},
            "attention_mask": {0: "prompts", 1: "tokens"},
            "text_embeds": {0: "prompts"},
        },
    )
    say("checking (onnx.checker, onnxruntime vs torch) ...")
    check_model(audio_path)
    check_model(text_path)

    short = max(2, int(mask[2:].sum(axis=1).max())) if len(mask) > 2 else ids.shape[1]
    with torch.no_grad():
        a_ref = audio(torch.from_numpy(feats)).numpy()
        t_ref = text(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
        # a batch of one and a shorter token sequence exercise the dynamic axes
        a1_ref = audio(torch.from_numpy(feats[1:])).numpy()
        t1_ref = text(torch.from_numpy(ids[2:, :short]), torch.from_numpy(mask[2:, :short])).numpy()
    sa = ort_session(audio_path, threads)
    st = ort_session(text_path, threads)
    a_onnx = sa.run(None, {"input_features": feats})[0]
    a1_onnx = sa.run(None, {"input_features": feats[1:]})[0]
    t_onnx = st.run(None, {"input_ids": ids, "attention_mask": mask})[0]
    t1_onnx = st.run(None, {"input_ids": ids[2:, :short], "attention_mask": mask[2:, :short]})[0]
    diff_audio = float(max(np.abs(a_onnx - a_ref).max(), np.abs(a1_onnx - a1_ref).max()))
    diff_text = float(max(np.abs(t_onnx - t_ref).max(), np.abs(t1_onnx - t1_ref).max()))
    say(f"max |onnx - torch|: audio {diff_audio:.2e}, text {diff_text:.2e}")
    if not (diff_audio < 1e-3 and diff_text < 1e-3):
        raise ModelError(
            f"exported ONNX disagrees with torch (audio {diff_audio:.2e}, text {diff_text:.2e}); not writing a manifest"
        )

    int8_info = None
    if int8:
        say("quantising the audio encoder to int8 (dynamic) ...")
        int8_info = _quantise(audio_path, out / AUDIO_INT8_FILE, feats, a_onnx, t_onnx, threads, exclude=rewritten)
        say("int8 vs fp32: min cosine {min_cosine:.4f}, max |diff| {max_abs_diff:.2e}".format(**int8_info))

    say("saving the onnxruntime-optimised audio graph(s) ...")
    optimised = {}
    if save_optimised(audio_path, out / AUDIO_OPT_FILE, feats, a_onnx, threads, say) is not None:
        optimised[AUDIO_FILE] = AUDIO_OPT_FILE
    if int8:
        a8 = ort_session(out / AUDIO_INT8_FILE, threads).run(None, {"input_features": feats})[0]
        if save_optimised(out / AUDIO_INT8_FILE, out / AUDIO_INT8_OPT_FILE, feats, a8, threads, say) is not None:
            optimised[AUDIO_INT8_FILE] = AUDIO_INT8_OPT_FILE
    return {
        "embedding_dim": int(a_onnx.shape[1]),
        "audio": {
            "file": AUDIO_FILE,
            "int8_file": AUDIO_INT8_FILE if int8 else None,
            "optimized": optimised,
            "graph_rewrites": rewritten,
            "input": "input_features",
            "input_shape": ["batch", 1, int(n_frames), int(n_mels)],
            "input_dtype": "float32",
            "output": "audio_embeds",
            "normalised": True,
        },
        "text": {
            "file": TEXT_FILE,
            "inputs": ["input_ids", "attention_mask"],
            "input_shape": ["prompts", "tokens"],
            "input_dtype": "int64",
            "output": "text_embeds",
            "normalised": True,
        },
        "max_abs_diff": {"audio": diff_audio, "text": diff_text},
        "int8": int8_info,
        "exporter": exporter,
    }


def write_manifest(out: Path, manifest: dict, say: Progress) -> dict:
    """``manifest`` checked as the model folder's contract (``ClapManifest``) and written by
    its one writer, with the sha256 of every file in ``out``, last (atomically): a folder
    without manifest.json is an export that did not finish."""
    say("hashing files ...")
    done = ClapManifest.from_dict(manifest, out / "manifest.json").write(out)
    say(f"wrote {out} ({len(done.files)} files + manifest.json)")
    return done.to_dict()


def _quantise(
    fp32_path: Path,
    int8_path: Path,
    feats: np.ndarray,
    a_fp32: np.ndarray,
    t_emb: np.ndarray,
    threads: int,
    exclude: list[str] | None = None,
) -> dict:
    # the input-side interpolation matrix stays fp32: quantising it would blur the features
    quantise_dynamic_int8(fp32_path, int8_path, exclude)
    check_model(int8_path)
    s = ort_session(int8_path, threads)
    a8 = s.run(None, {"input_features": feats})[0]
    cos = np.sum(a8 * a_fp32, axis=1) / (np.linalg.norm(a8, axis=1) * np.linalg.norm(a_fp32, axis=1))
    # do the test prompts rank the same for each clip?
    same_top = bool(np.all(np.argmax(a8 @ t_emb.T, axis=1) == np.argmax(a_fp32 @ t_emb.T, axis=1)))
    return {
        "file": int8_path.name,
        "method": "onnxruntime.quantization.quantize_dynamic QInt8, per channel, 7-bit (reduce_range)",
        "min_cosine": float(cos.min()),
        "max_abs_diff": float(np.abs(a8 - a_fp32).max()),
        "same_top_prompt": same_top,
    }
