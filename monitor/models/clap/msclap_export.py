"""Export Microsoft CLAP (msclap 2022 / 2023) into the same ONNX layout as LAION CLAP.

``sound-monitor export --model msclap:2023 | msclap:2022 | PATH.pth``. The result is read by
``monitor.models.clap.encoder.ClapBackend`` unchanged: an audio graph taking log-mel features
``[B, 1, frames, 64]`` and a text graph taking ``input_ids`` / ``attention_mask``, both
L2-normalised, with the front-end parameters, window length and logit scale in
manifest.json.

What msclap 1.3.4 does, and how it maps here (read from the installed package at export):

- Front-end: torchlibrosa ``Spectrogram`` (centred STFT, reflect padding, periodic Hann,
  power) + ``LogmelFilterBank`` (Slaney mel filters with Slaney norm, ``10 * log10(max(x,
  1e-10))``, no top_db) -- the same arithmetic as the LAION front-end in numpy
  (``monitor.models.clap.frontend``), so it stays outside the graph (measured cheaper per hop:
  notes/issue20.md). The 2023 HTSAT takes its mel parameters from msclap's
  ``models/config.py`` (filters laid out for 32 kHz, 50-14000 Hz), not from the yml it is
  fed audio by (44.1 kHz, 7 s); the export reads both and the manifest records them
  (``frontend.mel_rate_hz``). The 2022 Cnn14 uses the yml's (44.1 kHz, 50-14000 Hz, 5 s).
- Length: shorter clips are repeated to the window (``padding: repeat``); msclap crops
  longer ones at random, here (as for LAION) they are cut into consecutive crops whose
  embeddings are averaged.
- Text: GPT-2 (2023; the prompt + " <|endoftext|>", pad token "!" = id 0, the hidden state
  at index ``count(ids != 0) - 1``) or BERT (2022; the [CLS] state), then msclap's
  projection. The text weights come from the msclap checkpoint; the text model's hub repo
  gives only its config and tokenizer.
- Scores: ``exp(logit_scale) * cos(text, audio)``, softmax over the labels.

Only ``msclap.models`` is imported (the package's ``__init__`` imports its wrapper, which
needs torchaudio): install it with ``pip install --no-deps msclap==1.3.4`` (its metadata pins
numpy < 2 and transformers < 5 and pulls a torchaudio for another torch; the model code runs
on this project's versions, see README "Microsoft CLAP").
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import os
import sys
import time
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from monitor.errors import ModelError, UserError
from monitor.models.clap.export import (
    AUDIO_FILE,
    MANIFEST_VERSION,
    Progress,
    _clear_earlier_export,
    _need_export_deps,
    _revision_of,
    _stderr_progress,
    from_hub,
    normalised_encoder,
    resolve_source,
    write_encoders,
    write_manifest,
)
from monitor.models.clap.frontend import ClapFrontend, FrontendParams

MSCLAP_REPO = "microsoft/msclap"
MSCLAP_PIN = "msclap==1.3.4"


@dataclass(frozen=True)
class Version:
    weights: str  # file in microsoft/msclap
    text_repo: str  # the text model's hub id (config + tokenizer)
    audio: str  # msclap audio encoder name


VERSIONS = {
    "2023": Version("CLAP_weights_2023.pth", "openai-community/gpt2", "HTSAT"),
    "2022": Version("CLAP_weights_2022.pth", "google-bert/bert-base-uncased", "Cnn14"),
}
# key prefixes that tell the versions apart in a checkpoint given as a path
_AUDIO_KEYS = {"2023": "audio_encoder.base.htsat.", "2022": "audio_encoder.base.conv_block1."}
# buffers and front-end weights that a checkpoint may lack without harm (msclap loads with
# strict=False): GPT-2's causal-mask buffers, BERT's position ids, torchlibrosa's fixed
# STFT/mel matrices (rebuilt by the constructor from the same parameters)
_OPTIONAL_KEYS = (".attn.bias", ".attn.masked_bias", "position_ids", "spectrogram_extractor.", "logmel_extractor.")


def is_msclap_source(src: str) -> bool:
    return src.startswith("msclap:") or src.endswith(".pth")


# --------------------------------------------------------------------------------------
# msclap's model classes, without its wrapper
# --------------------------------------------------------------------------------------
def _msclap_models() -> types.ModuleType:
    """``msclap.models`` imported without running ``msclap/__init__.py`` (which imports
    CLAPWrapper, and with it torchaudio)."""
    spec = importlib.util.find_spec("msclap") if "msclap.models" not in sys.modules else None
    if "msclap.models" not in sys.modules and (spec is None or not spec.submodule_search_locations):
        raise UserError(
            f"export --model msclap:... needs Microsoft's msclap package: pip install --no-deps {MSCLAP_PIN} "
            "torchlibrosa==0.1.0 'librosa>=0.10' (or `make export-msclap`)"
        )
    if "msclap" not in sys.modules and spec is not None:
        stub = types.ModuleType("msclap")
        stub.__path__ = list(spec.submodule_search_locations or [])
        sys.modules["msclap"] = stub
    try:
        import msclap.models as models
        import msclap.models.htsat as htsat
    except ImportError as e:
        raise UserError(
            f"msclap's model code cannot be imported ({e}); pip install --no-deps {MSCLAP_PIN} "
            "torchlibrosa==0.1.0 'librosa>=0.10'"
        ) from None
    if htsat.window_reverse is not window_reverse:
        htsat.msclap_window_reverse = htsat.window_reverse  # the original, for the tests
        htsat.window_reverse = window_reverse
    return models


def window_reverse(windows, window_size: int, h: int, w: int):
    """msclap's HTSAT ``window_reverse`` (windows [nW*B, ws, ws, C] -> [B, H, W, C]) with the
    batch left to the reshape: msclap computes it as ``int(windows.shape[0] / ...)``, which
    tracing freezes into the graph as the example's batch size (a graph exported with 2 clips
    then gives wrong embeddings for 1 or 6). Same values for every batch."""
    c = windows.shape[-1]
    x = windows.reshape(-1, h // window_size, w // window_size, window_size, window_size, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c)


def _msclap_config(version: str) -> dict:
    import yaml

    models = _msclap_models()
    path = Path(str(models.__file__)).parent.parent / "configs" / f"config_{version}.yml"
    try:
        return dict(yaml.safe_load(path.read_text()))
    except (OSError, ValueError, TypeError) as e:
        raise ModelError(f"cannot read msclap's {path}: {e}") from None


def frontend_params(version: str, args: dict) -> FrontendParams:
    """The log-mel the msclap audio encoder computes, as the numpy front-end's parameters."""
    rate = int(args["sampling_rate"])
    if VERSIONS[version].audio == "HTSAT":
        hc = _msclap_models().config  # HTSATWrapper builds its front-end from this module
        n_fft, hop, mels, fmin, fmax, mel_rate = (
            int(hc.window_size),
            int(hc.hop_size),
            int(hc.mel_bins),
            float(hc.fmin),
            float(hc.fmax),
            int(hc.sample_rate),
        )
    else:
        n_fft, hop, mels = int(args["window_size"]), int(args["hop_size"]), int(args["mel_bins"])
        fmin, fmax, mel_rate = float(args["fmin"]), float(args["fmax"]), rate
    return FrontendParams(
        sample_rate_hz=rate,
        n_fft=n_fft,
        hop_length=hop,
        n_mels=mels,
        f_min_hz=fmin,
        f_max_hz=fmax,
        max_length_s=float(args["duration"]),
        padding="repeat",
        mel_rate_hz=None if mel_rate == rate else mel_rate,
    )


@contextlib.contextmanager
def _text_model_from_config() -> Iterator[None]:
    """While msclap builds its TextEncoder, ``AutoModel.from_pretrained(dir)`` makes the
    architecture from ``dir``'s config only: the weights come from the CLAP checkpoint."""
    from transformers import AutoConfig, AutoModel

    clap_mod: Any = sys.modules["msclap.models.clap"]

    class FromConfig:
        @staticmethod
        def from_pretrained(name, *a, **k):
            return AutoModel.from_config(AutoConfig.from_pretrained(name))

    saved = clap_mod.AutoModel
    clap_mod.AutoModel = FromConfig
    try:
        yield
    finally:
        clap_mod.AutoModel = saved


def build_model(version: str, args: dict, text_dir: Path, state: dict | None = None):
    """msclap's ``CLAP`` for ``version`` with the text model of ``text_dir``; ``state``
    loaded when given (as msclap does, strict=False, then checked here)."""
    _msclap_models()
    from msclap.models.clap import CLAP

    with _text_model_from_config():
        model = CLAP(
            audioenc_name=args["audioenc_name"],
            sample_rate=args["sampling_rate"],
            window_size=args["window_size"],
            hop_size=args["hop_size"],
            mel_bins=args["mel_bins"],
            fmin=args["fmin"],
            fmax=args["fmax"],
            classes_num=args["num_classes"],
            out_emb=args["out_emb"],
            text_model=str(text_dir),
            transformer_embed_dim=args["transformer_embed_dim"],
            d_proj=args["d_proj"],
        )
    # its forward chooses the pooling by the text model's name ("gpt": last token, else CLS)
    model.caption_encoder.text_model = str(args["text_model"])
    if state is not None:
        result = model.load_state_dict(state, strict=False)
        missing = [k for k in result.missing_keys if not any(o in k for o in _OPTIONAL_KEYS)]
        if missing:
            raise ModelError(
                f"the checkpoint is not a complete msclap {version} model: {len(missing)} weights missing "
                f"(e.g. {', '.join(missing[:3])})"
            )
    return model.eval()


def _without_frontend(audio_encoder, kind: str):
    """A view of msclap's AudioEncoder whose torchlibrosa front-end is the identity: it takes
    the log-mel [B, 1, frames, mels] the runtime computes. Parameters are shared."""
    import torch

    def shallow(m):
        c = copy.copy(m)
        c._modules = dict(m._modules)
        return c

    enc = shallow(audio_encoder)
    enc.base = shallow(audio_encoder.base)
    inner = enc.base
    if kind == "HTSAT":
        inner.htsat = shallow(audio_encoder.base.htsat)
        inner = inner.htsat
    inner.spectrogram_extractor = torch.nn.Identity()
    inner.logmel_extractor = torch.nn.Identity()
    return enc


def wrappers(model, kind: str):
    """The exported audio module (log-mel in) and text module (token ids and mask in)."""
    audio = normalised_encoder(_without_frontend(model.audio_encoder, kind), lambda m, f: m(f)[0])
    text = normalised_encoder(model.caption_encoder, lambda m, ids, mask: m({"input_ids": ids, "attention_mask": mask}))
    return audio, text


# --------------------------------------------------------------------------------------
# sources
# --------------------------------------------------------------------------------------
def _safe_load(path: Path) -> dict:
    """The checkpoint's state dict, unpickled with torch's weights-only loader (a downloaded
    pickle must not run code); msclap stores it under "model"."""
    import pickle

    import torch

    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError) as e:
        raise ModelError(
            f"cannot read {path} as a weights-only torch checkpoint ({str(e).splitlines()[0][:200]}); "
            "sound-monitor does not unpickle arbitrary objects"
        ) from None
    state = obj.get("model", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not state:
        raise ModelError(f"{path} holds no state dict (expected {{'model': state_dict}} as msclap saves)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_checkpoint(path: Path, version: str = "") -> tuple[dict, str]:
    """(state dict, msclap version) of a checkpoint; the version is read off its keys and
    must be ``version`` when one is asked for."""
    state = _safe_load(path)
    found = next((v for v, prefix in _AUDIO_KEYS.items() if any(k.startswith(prefix) for k in state)), None)
    if found is None:
        raise ModelError(f"{path} is not an msclap checkpoint (neither an HTSAT nor a Cnn14 audio encoder)")
    if version and found != version:
        raise ModelError(f"{path} is not an msclap {version} checkpoint")
    return state, found


def _download_weights(version: str) -> tuple[Path, str]:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise ModelError("cannot download msclap: huggingface_hub is missing") from None
    name = VERSIONS[version].weights
    how = (
        f"on a machine with internet run `hf download {MSCLAP_REPO} {name}`, copy the file here and pass "
        f"`--model PATH/{name}`"
    )
    p = from_hub(lambda **k: hf_hub_download(MSCLAP_REPO, name, **k), f"{MSCLAP_REPO}/{name}", how, 60)
    return p, _revision_of(p.parent)


def _tokenizer(text_dir: Path, args: dict):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(text_dir))
    if "gpt" in str(args["text_model"]):
        tok.add_special_tokens({"pad_token": "!"})  # as msclap's wrapper
    return tok


def _prompts_tokens(tok, args: dict, prompts: list[str]) -> tuple[np.ndarray, np.ndarray, str]:
    suffix = " <|endoftext|>" if "gpt" in str(args["text_model"]) else ""
    enc = tok([p + suffix for p in prompts], padding=True, return_tensors="np")
    return enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64), suffix


# --------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------
def export_msclap(
    src: str,
    out_dir: str | os.PathLike,
    int8: bool = False,
    progress: Progress | None = _stderr_progress,
    threads: int = 2,
) -> dict:
    """Export ``msclap:2023``, ``msclap:2022`` or a local msclap ``.pth`` into ``out_dir``."""
    _need_export_deps()
    say = progress or (lambda _m: None)
    out = Path(out_dir).expanduser()
    _clear_earlier_export(out, say, remove=False)
    _msclap_models()
    if src.startswith("msclap:"):
        version = src.split(":", 1)[1]
        if version not in VERSIONS:
            raise UserError(f"--model {src}: msclap versions are {', '.join(f'msclap:{v}' for v in VERSIONS)}")
        say(f"getting {MSCLAP_REPO}/{VERSIONS[version].weights} ...")
        weights, revision = _download_weights(version)
    else:
        weights, revision = Path(src).expanduser(), "local"
        if not weights.is_file():
            raise UserError(f"--model {src}: no such file")
        version = ""

    import torch

    if torch.get_num_threads() > threads:
        torch.set_num_threads(threads)
    say(f"loading {weights} ...")
    t0 = time.perf_counter()
    state, version = load_checkpoint(weights, version)
    args = _msclap_config(version)
    text_dir, text_revision = resolve_source(VERSIONS[version].text_repo, patterns=["*.json", "*.txt", "merges.txt"])
    _clear_earlier_export(out, say)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create output directory {out}: {e}") from None
    model = build_model(version, args, text_dir, state)
    tok = _tokenizer(text_dir, args)
    fe_params = frontend_params(version, args)
    say(f"loaded msclap {version} in {time.perf_counter() - t0:.1f} s")

    audio, text = wrappers(model, VERSIONS[version].audio)
    feats = test_features(fe_params)
    ids, mask, suffix = _prompts_tokens(tok, args, ["This is a sound of a dog barking.", "rain", "silence"])
    parts = write_encoders(out, audio, text, feats, ids, mask, int8, threads, say)
    say("checking the numpy front-end against msclap's own (torchlibrosa) ...")
    fe_diff, fe_exact = frontend_difference(model, VERSIONS[version].audio, fe_params)
    e2e = end_to_end_difference(model, fe_params, out, threads)
    say(
        f"front-end max |numpy - torchlibrosa| {fe_diff:.2e} dB (float64 torchlibrosa: {fe_exact:.2e}); "
        f"waveform -> embedding max diff {e2e:.2e}"
    )
    if fe_exact > 1e-4 or e2e > 1e-4:
        raise ModelError(
            f"the numpy front-end disagrees with msclap's ({fe_exact:.2e} dB, embeddings {e2e:.2e}); "
            "not writing a manifest"
        )

    say("saving the tokenizer ...")
    tok.save_pretrained(str(out))
    if not (out / "tokenizer.json").is_file():
        raise ModelError(f"the tokenizer of {VERSIONS[version].text_repo} has no fast (tokenizer.json) form")
    manifest = {
        "kind": "clap",
        "family": "msclap",
        "format_version": MANIFEST_VERSION,
        "source": src,
        "source_revision": revision,
        "source_file": weights.name,
        "text_source": VERSIONS[version].text_repo,
        "text_source_revision": text_revision,
        "name": f"msclap-{version}",
        "sample_rate": fe_params.sample_rate_hz,
        "window_s": fe_params.max_length_s,
        "embedding_dim": parts["embedding_dim"],
        "logit_scale": float(model.logit_scale.exp().item()),
        "audio": parts["audio"],
        "text": {
            **parts["text"],
            "tokenizer": "tokenizer.json",
            "pad_token_id": int(tok.pad_token_id if tok.pad_token_id is not None else 0),
            "max_tokens": int(args["text_len"]),
            "suffix": suffix,
            "pooling": "last token (count of ids != 0) - 1" if suffix else "CLS",
        },
        "frontend": fe_params.to_dict(),
        "max_abs_diff": {
            **parts["max_abs_diff"],
            "frontend_db": fe_diff,
            "frontend_db_float64": fe_exact,
            "waveform_to_embedding": e2e,
        },
        "int8": parts["int8"],
        "exporter": parts["exporter"],
    }
    return write_manifest(out, manifest, say)


def test_features(fe_params: FrontendParams, seed: int = 0) -> np.ndarray:
    """Features of two noise clips: one window long and a third of one (repeated)."""
    rng = np.random.default_rng(seed)
    fe = ClapFrontend(fe_params)
    n = fe.max_samples
    clips = [0.1 * rng.standard_normal(n), 0.3 * rng.standard_normal(n // 3)]
    return np.concatenate([fe.features(c.astype(np.float32)) for c in clips], axis=0)


def _torch_frontend(model, kind: str):
    base = model.audio_encoder.base
    return base.htsat if kind == "HTSAT" else base


def frontend_difference(model, kind: str, fe_params: FrontendParams, seed: int = 1) -> tuple[float, float]:
    """max |numpy log-mel - torchlibrosa log-mel| (dB) on noise, a tone and a quiet clip:
    against msclap's front-end as it runs (float32), and against the same layers in float64
    (the arithmetic itself; float32 rounding alone moves the tone's log-mel by ~4e-4 dB)."""
    import torch

    rng = np.random.default_rng(seed)
    n = int(fe_params.max_samples)
    t = np.arange(n) / fe_params.sample_rate_hz
    waves = np.stack(
        [
            0.1 * rng.standard_normal(n),
            0.5 * np.sin(2 * np.pi * 1000 * t) + 0.01 * rng.standard_normal(n),
            1e-3 * rng.standard_normal(n),
        ]
    ).astype(np.float32)
    ours = ClapFrontend(fe_params).batch_features(waves)
    m = _torch_frontend(model, kind)
    stft64, mel64 = copy.deepcopy(m.spectrogram_extractor).double(), copy.deepcopy(m.logmel_extractor).double()
    with torch.no_grad():
        ref = m.logmel_extractor(m.spectrogram_extractor(torch.from_numpy(waves))).numpy()
        ref64 = mel64(stft64(torch.from_numpy(waves).double())).numpy()
    return float(np.abs(ours - ref).max()), float(np.abs(ours - ref64).max())


def end_to_end_difference(model, fe_params: FrontendParams, out: Path, threads: int, seed: int = 2) -> float:
    """msclap's audio encoder on waveforms (its own front-end) against the numpy front-end +
    the exported graph: max |difference| of the L2-normalised embeddings."""
    import torch

    from monitor.models.clap.graph import ort_session

    rng = np.random.default_rng(seed)
    waves = (0.1 * rng.standard_normal((2, int(fe_params.max_samples)))).astype(np.float32)
    with torch.no_grad():
        ref = model.audio_encoder(torch.from_numpy(waves))[0].numpy()
    ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    feats = ClapFrontend(fe_params).batch_features(waves)
    got = ort_session(out / AUDIO_FILE, threads).run(None, {"input_features": feats})[0]
    return float(np.abs(got - ref).max())


def make_random_msclap(out: Path, version: str, text_dir: Path, seed: int = 0) -> Path:
    """A randomly initialised msclap checkpoint (``{"model": state_dict}``, as msclap saves)
    with the full-size audio encoder and the text model of ``text_dir`` (tests, benchmarks).

    Its BatchNorm statistics are measured on a few noises and tones, as training leaves
    them: with the initial (0, 1) statistics the log-mel's -50 dB offset dominates every
    layer and all clips get nearly the same embedding, which would let a broken export pass."""
    import torch

    torch.manual_seed(seed)
    args = _msclap_config(version)
    model = build_model(version, args, text_dir)
    rate, n = int(args["sampling_rate"]), int(args["duration"] * args["sampling_rate"])
    rng = np.random.default_rng(seed)
    t = np.arange(n) / rate
    waves = [rng.standard_normal(n) * 10 ** (db / 20) for db in (-50, -35, -20)]
    waves += [0.3 * np.sin(2 * np.pi * f * t) * (np.sin(2 * np.pi * 0.7 * t) > 0) for f in (220, 1200, 5000)]
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d | torch.nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # a plain average over the calibration batch
        m.train()
    with torch.no_grad():
        model.audio_encoder(torch.from_numpy(np.stack(waves).astype(np.float32)))
    for m in bns:
        m.momentum = 0.1
    model.eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict()}, str(out))
    return out


def reference_model(weights: Path, text_dir: Path) -> Any:
    """msclap's torch model of a checkpoint, as the export loads it (for tests)."""
    state, version = load_checkpoint(weights)
    return build_model(version, _msclap_config(version), text_dir, state), version
