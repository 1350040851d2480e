"""The CLAP backend on onnxruntime.

``ClapBackend.from_dir(DIR)`` loads a directory written by ``sound-monitor export`` or
``sound-monitor models fetch clap``:
manifest.json is read, and every ONNX/tokenizer file is checked against its sha256 before
use (a corrupt or replaced file is a ModelError, not a wrong answer). The text encoder is
loaded lazily, on the first ``embed_text`` call: with the label cache warm, a restart never
loads it at all (it is the larger of the two: RoBERTa-base, ~500 MB).
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter, deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monitor.errors import ModelError
from monitor.files import sha256_file
from monitor.models.backend import Backend, l2_normalise
from monitor.models.clap.frontend import ClapFrontend, FrontendParams, StreamingFrontend
from monitor.models.clap.manifest import ClapManifest
from monitor.models.clap.text import PromptTokenizer
from monitor.models.ort import run_options_shrink
from monitor.models.ort import session as ort_session
from monitor.types import Window

# windows per onnxruntime call: windows pending after a stall, or of several sources, go
# through together (on 2-core x86 machines not consistently cheaper per window than one by
# one: see `bench`'s batch4 figure). The cap bounds memory: onnxruntime's arena grows with
# the batch (full-size CLAP: +45 MB for 2 windows, +136 MB for 4, +325 MB for 8 over one),
# and a call larger than the usual one (a catch-up) hands that growth back when it ends, so
# a stall does not leave the monitor hundreds of MB larger for good. The usual size (one
# window per call for one source, N for N sources completing together) keeps its arena:
# handing it back and regrowing it on every call costs ~2-3 % per window. A session with
# the batch axis fixed to 1 was tried for the steady state and was no faster.
AUDIO_BATCH = 4
USUAL_BATCH_CALLS = 32  # the usual batch size is the most frequent of this many recent calls
TEXT_BATCH = 64


def _return_freed_memory() -> None:
    """Give freed heap back to the OS. glibc keeps the text encoder's freed arena mapped
    (measured: RSS stays at ~750 MB after the session is dropped, 204 MB after a trim)."""
    import gc

    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


class ClapBackend(Backend):
    """CLAP audio + text encoders exported to ONNX (see monitor.models.backend.Backend).

    Streaming: ``prepare`` computes a window's log-mel features with one
    ``StreamingFrontend`` per stream (the only place that cache lives), which reuses the
    STFT frames consecutive windows share; ``embed_prepared`` runs the audio encoder on them.
    """

    def __init__(
        self, path: Path, manifest: ClapManifest, threads: int = 2, int8: bool = False, spinning: bool = False
    ):
        self.path = path
        self.manifest = manifest.to_dict()
        self.threads = int(threads)
        self.int8 = bool(int8)
        self.int8_choice = ""  # model.int8: auto's decision, for the banner (monitor/models/clap/int8_auto.py)
        self.spinning = bool(spinning)
        self._streams: dict[str, StreamingFrontend] = {}
        try:
            self.frontend = ClapFrontend(FrontendParams.from_dict(dict(manifest.frontend)))
        except (KeyError, TypeError, ValueError) as e:
            raise ModelError(f"{path / 'manifest.json'} is incomplete or invalid ({type(e).__name__}: {e})") from None
        audio, text = manifest.audio, manifest.text
        self.embedding_dim = manifest.embedding_dim
        self.logit_scale = manifest.logit_scale
        self.window_s = manifest.window_s
        self.crop_s: float | None = self.frontend.max_samples / self.frontend.params.sample_rate_hz
        files: dict[str, str] = dict(manifest.files)
        self.sample_rate_hz = self.frontend.sample_rate_hz
        self._files = files
        if int8:
            audio_file = audio.get("int8_file")
            if not audio_file:
                raise ModelError(
                    f"{path} has no int8 audio encoder: re-run `sound-monitor export ... --int8` "
                    "or `sound-monitor models fetch clap --variant int8`"
                )
        else:
            audio_file = audio["file"]
        # export also saves the graph already optimised by onnxruntime: loads faster
        optimised = (audio.get("optimized") or {}).get(audio_file)
        if optimised and optimised in files and (path / optimised).is_file():
            audio_file = optimised
        self._audio_file = audio_file
        self._audio_input = audio.get("input", "input_features")
        # fetched graphs have more outputs than the embedding (transformers.js: last_hidden_state)
        self._audio_output = [audio.get("output", "audio_embeds")]
        self._text_output = [text.get("output", "text_embeds")]
        self._text_file = text["file"]
        self._tokenizer_file = text.get("tokenizer", "tokenizer.json")
        self._pad_id = int(text.get("pad_token_id", 1))
        self._max_tokens = int(text.get("max_tokens", 512))
        self._suffix = str(text.get("suffix", ""))
        for name in (audio_file, self._text_file, self._tokenizer_file):
            if name not in files:
                raise ModelError(f"{path / 'manifest.json'} lists no sha256 for {name}")
            if not (path / name).is_file():
                raise ModelError(f"{path / name} is missing: re-run `sound-monitor export --out {path}`")
        key_src = "|".join(["clap", files[audio_file], files[self._text_file], files[self._tokenizer_file]])
        self.cache_key = hashlib.sha256(key_src.encode()).hexdigest()
        base = manifest.name or path.name
        self.name = f"{base}{'-int8' if int8 and not base.endswith('-int8') else ''}@{self.cache_key[:8]}"
        self._n_frames = self.frontend.n_frames
        self._n_mels = self.frontend.params.n_mels
        self._audio = self._session(audio_file)
        self._shrink = run_options_shrink()
        self._recent_batches: deque[int] = deque(maxlen=USUAL_BATCH_CALLS)
        self._check_inputs(self._audio, audio_file, {self._audio_input: [None, 1, self._n_frames, self._n_mels]})
        self._check_output(self._audio, audio_file, self._audio_output[0])
        self._text = None
        self._tokenizer: PromptTokenizer | None = None
        self._text_lock = threading.Lock()

    # -- loading ------------------------------------------------------------------------
    @classmethod
    def from_dir(cls, path: str | Path, threads: int = 2, int8: bool = False, spinning: bool = False) -> ClapBackend:
        p = Path(path).expanduser()
        if not p.is_dir():
            raise ModelError(f"model directory not found: {p}")
        hint = f" (run `sound-monitor models fetch clap --out {p}` or `sound-monitor export --out {p}`)"
        return cls(p, ClapManifest.read(p, hint), threads=threads, int8=int8, spinning=spinning)

    def _verify(self, name: str) -> Path:
        f = self.path / name
        try:
            actual = sha256_file(f)
        except OSError as e:
            raise ModelError(f"cannot read {f}: {e}") from None
        expected = self._files[name]
        if actual != expected:
            raise ModelError(
                f"{f} does not match manifest.json (sha256 {actual[:12]}..., expected {expected[:12]}...): "
                "the file is corrupt or was replaced; re-run `sound-monitor export`"
            )
        return f

    def _session(self, name: str) -> Any:
        f = self._verify(name)
        try:
            return ort_session(f, self.threads, spinning=self.spinning)
        except ModelError:
            raise
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise ModelError(f"onnxruntime cannot load {f}: {str(e).splitlines()[0][:200]}") from None

    def _check_inputs(self, session: Any, name: str, expected: dict[str, list]) -> None:
        """The graph must take what the manifest says (a valid ONNX of the wrong model fails here)."""
        got = {i.name: i.shape for i in session.get_inputs()}
        problem = None
        if set(got) != set(expected):
            problem = f"inputs {sorted(got)}, expected {sorted(expected)}"
        else:
            for k, shape in expected.items():
                g = got[k]
                if len(g) != len(shape) or any(
                    e is not None and isinstance(d, int) and d != e for d, e in zip(g, shape)
                ):
                    problem = f"input {k} has shape {g}, expected {shape}"
        if problem:
            raise ModelError(
                f"{self.path / name} does not fit manifest.json ({problem}): re-run `sound-monitor export`"
            )

    def _check_output(self, session: Any, name: str, output: str) -> None:
        outs = {o.name: o.shape for o in session.get_outputs()}
        if output not in outs or len(outs[output]) != 2:
            raise ModelError(
                f"{self.path / name} does not fit manifest.json (no [batch, dim] output {output!r}; "
                f"outputs {sorted(outs)}): re-export or re-fetch the model"
            )

    def _text_parts(self) -> tuple:
        with self._text_lock:
            if self._text is None:
                self._tokenizer = PromptTokenizer(
                    self._verify(self._tokenizer_file), self._pad_id, self._max_tokens, self._suffix
                )
                text = self._session(self._text_file)
                self._check_inputs(text, self._text_file, {"input_ids": [None, None], "attention_mask": [None, None]})
                self._check_output(text, self._text_file, self._text_output[0])
                self._text = text
            return self._tokenizer, self._text

    def release_text(self) -> None:
        """Drop the text encoder (the larger model, ~1 GB resident) once labels are embedded;
        a later ``embed_text`` (new labels on reload) loads it again."""
        with self._text_lock:
            if self._text is None:
                return
            self._text = None
            self._tokenizer = None
        _return_freed_memory()

    # -- embedding ----------------------------------------------------------------------
    def embed_features(self, features: np.ndarray) -> np.ndarray:
        """Log-mel features float32 [B, 1, frames, mels] -> L2-normalised [B, D]."""
        x = np.asarray(features)
        expected = (1, self._n_frames, self._n_mels)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected or x.shape[0] < 1:
            raise ValueError(f"audio encoder input must be [B, {', '.join(map(str, expected))}], got {list(x.shape)}")
        if x.dtype != np.float32:
            if not np.issubdtype(x.dtype, np.floating):
                raise ValueError(f"audio encoder input must be float32, got {x.dtype}")
            x = x.astype(np.float32)
        x = np.ascontiguousarray(x)
        out = []
        for i in range(0, x.shape[0], AUDIO_BATCH):
            part = x[i : i + AUDIO_BATCH]
            run_options = self._shrink if self._larger_than_usual(part.shape[0]) else None
            out.append(self._audio.run(self._audio_output, {self._audio_input: part}, run_options)[0])
        return l2_normalise(np.concatenate(out, axis=0))

    def _larger_than_usual(self, n: int) -> bool:
        """Is a call of ``n`` windows larger than the most frequent size of recent calls? Also
        records ``n`` as the newest of those calls (so ask once per call)."""
        recent = self._recent_batches
        usual = Counter(recent).most_common(1)[0][0] if recent else 1
        recent.append(n)
        return n > usual

    def embed_audio(self, batch: np.ndarray) -> np.ndarray:
        """Mono clips float32 [B, n] at ``sample_rate_hz`` -> L2-normalised [B, D].

        Clips of at most ``max_length_s`` (10 s) are embedded exactly as the reference
        pipeline does; longer clips average the embeddings of their consecutive 10 s crops
        (see monitor.models.clap.frontend) and re-normalise.
        """
        b = np.asarray(batch)
        if b.ndim == 1:
            raise ValueError("embed_audio takes a batch [B, n]; use batch[None, :] for one clip")
        if b.ndim != 2 or b.shape[0] < 1 or b.shape[1] < 1:
            raise ValueError(f"embed_audio takes float32 [B, n] with B, n >= 1, got shape {list(b.shape)}")
        if not np.issubdtype(b.dtype, np.floating):
            raise ValueError(f"embed_audio takes float samples, got {b.dtype}")
        if not np.isfinite(b).all():
            raise ValueError("audio contains NaN or Inf samples")
        if b.shape[1] <= self.frontend.max_samples:
            return self.embed_features(self.frontend.batch_features(b))
        return np.stack([self.embed_clip(row) for row in b])

    def prepare(self, windows: Sequence[Window], stream: str) -> np.ndarray:
        """Consecutive windows of one stream -> their features [B, 1, frames, mels]; the same as
        ``frontend.batch_features`` of their samples, but the stream's ``StreamingFrontend``
        reuses the STFT frames the windows share (~1/5 of the work per hop)."""
        sf = self._streams.get(stream)
        if sf is None:
            sf = self._streams[stream] = StreamingFrontend(self.frontend)
        feats = []
        for w in windows:
            if w.sample_rate_hz != self.sample_rate_hz:
                raise ValueError(f"window at {w.sample_rate_hz} Hz, model expects {self.sample_rate_hz} Hz")
            feats.append(sf.window_features(w.samples, int(round(w.start_s * w.sample_rate_hz))))
        return np.stack(feats)

    def embed_prepared(self, rows: np.ndarray) -> np.ndarray:
        return self.embed_features(rows)

    def end_stream(self, stream: str) -> None:
        self._streams.pop(stream, None)

    def embed_clip(self, clip: np.ndarray) -> np.ndarray:
        """One mono clip of any length -> L2-normalised [D] (crop-averaged beyond 10 s)."""
        feats = self.frontend.features(np.asarray(clip, dtype=np.float32))
        return l2_normalise(self.embed_features(feats).mean(axis=0))

    def embed_text(self, prompts: Sequence[str]) -> np.ndarray:
        """Prompts -> L2-normalised [P, D]."""
        if isinstance(prompts, str):
            raise TypeError("embed_text takes a sequence of prompts, not a single string")
        prompts = list(prompts)
        if not prompts:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        tokenizer, session = self._text_parts()
        out = []
        for i in range(0, len(prompts), TEXT_BATCH):
            tb = tokenizer(prompts[i : i + TEXT_BATCH])
            out.append(
                session.run(self._text_output, {"input_ids": tb.input_ids, "attention_mask": tb.attention_mask})[0]
            )
        return l2_normalise(np.concatenate(out, axis=0))

    def __repr__(self) -> str:
        return f"ClapBackend({self.name!r}, dim={self.embedding_dim}, path={str(self.path)!r})"
