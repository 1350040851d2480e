"""The offline backend: YAMNet (AudioSet, 521 classes) + MiniLM text encoder, from PyPI.

One 521-d space serves audio and text. Audio: YAMNet's class probabilities, pooled over
the 0.96 s patches of a window (max of sigmoid), square-root compressed, L2-normalised.
Text: the prompt is embedded with MiniLM and compared with the 521 class names (each
embedded in a few phrasings); the top-k most similar classes get softmax weights with a
temperature. A label's logit is ``logit_scale * cos(audio, text)``: the normalised
probability mass of the classes the label means. Prototypes (mean of audio vectors of
example clips) live in the same space.

tokenizers and onnxruntime are imported inside the functions that need them (onnxruntime also
in monitor/clap/encoder.py, clap/graph.py and bench.py).
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monitor.backend import Backend, l2_normalise
from monitor.errors import ModelError
from monitor.files import read_manifest
from monitor.logs import say as _say
from monitor.offline import features
from monitor.offline.fetch import FILES, default_dir, fetch_offline, is_complete, sha256_file

TOP_K = 5
TEMPERATURE = 0.03
CLASS_PHRASES = ("{}", "the sound of {}")


def _session(path: Path, threads: int, spinning: bool = False):
    from monitor.ort import session

    try:
        return session(path, threads, spinning=spinning)
    except ModelError:
        raise
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise ModelError(f"cannot load {path}: {str(e).splitlines()[0]}") from None


class OfflineBackend(Backend):
    name = "offline-yamnet-minilm"
    sample_rate_hz = features.SAMPLE_RATE_HZ
    window_s = 5.0
    embedding_dim = 521
    crop_s = None  # class probabilities are averaged over every 0.96 s patch of the clip
    has_audio_features = True  # YAMNet's 1024-d patch embeddings (learned adapters, prototypes)
    has_label_semantics = True  # MiniLM sentence vectors of label names
    logit_scale = 10.0

    def __init__(self, directory: Path, threads: int = 2, spinning: bool = False):
        self.dir = Path(directory)
        mpath = self.dir / "manifest.json"
        manifest = read_manifest(mpath, "; run `sound-monitor models fetch offline`")
        if not isinstance(manifest.get("files"), dict):
            raise ModelError(f"{mpath} lists no files; run `sound-monitor models fetch offline`")
        for name in FILES:
            p = self.dir / name
            if not p.is_file():
                raise ModelError(f"{p} is missing; run `sound-monitor models fetch offline`")
            if sha256_file(p) != manifest["files"].get(name):
                raise ModelError(
                    f"{p} does not match its sha256 in {mpath} (corrupt?); delete {self.dir} and fetch again"
                )
        self.cache_key = (
            "offline-"
            + hashlib.sha256(
                json.dumps(manifest["files"], sort_keys=True).encode() + f"{TOP_K}/{TEMPERATURE}".encode()
            ).hexdigest()[:16]
        )
        self.threads = threads
        self.spinning = bool(spinning)
        self._yamnet = _session(self.dir / "yamnet.onnx", threads, self.spinning)
        self._minilm: Any = None  # onnxruntime session, loaded on first use
        self._tok: Any = None  # tokenizers.Tokenizer, loaded on first use
        with open(self.dir / "yamnet_class_map.csv", newline="", encoding="utf-8") as f:
            self.class_names = [row["display_name"] for row in csv.DictReader(f)]
        self._class_emb: np.ndarray | None = None

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def from_dir(cls, path, threads: int = 2, spinning: bool = False) -> OfflineBackend:
        return cls(Path(path), threads, spinning)

    @classmethod
    def load(
        cls, threads: int = 2, cache_dir=None, models_dir=None, fetch: bool = True, spinning: bool = False
    ) -> OfflineBackend:
        target = Path(cache_dir) if cache_dir else default_dir(models_dir)
        if not is_complete(target):
            if not fetch:
                raise ModelError(f"the offline model is not in {target}; run `sound-monitor models fetch offline`")
            fetch_offline(target, say=_say)
        return cls(target, threads, spinning)

    # -- audio ---------------------------------------------------------------------------------
    def _run_patches(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One clip -> (class logits [n, 521], embeddings [n, 1024]) per 0.96 s patch."""
        p = features.patches(x)
        logits, emb = [], []
        for patch in p:
            out = self._yamnet.run(None, {"audio": patch[None, None].astype(np.float32)})
            logits.append(out[0][0])
            emb.append(out[1][0])
        return np.stack(logits), np.stack(emb)

    def _check(self, batch) -> np.ndarray:
        b = np.asarray(batch, dtype=np.float32)
        if b.ndim == 1:
            b = b[None]
        if b.ndim != 2:
            raise ValueError(f"expected [batch, samples] audio, got shape {b.shape}")
        return b

    def class_probabilities(self, batch) -> np.ndarray:
        """[B, n] -> [B, 521] pooled AudioSet class probabilities (max over patches)."""
        out = []
        for x in self._check(batch):
            logits, _ = self._run_patches(x)
            out.append((1.0 / (1.0 + np.exp(-np.clip(logits, -60.0, 60.0)))).max(axis=0))
        return np.stack(out).astype(np.float32)

    def embed_audio(self, batch) -> np.ndarray:
        return l2_normalise(np.sqrt(self.class_probabilities(batch)))

    def embed_audio_features(self, batch) -> np.ndarray:
        """[B, n] -> [B, 1024] YAMNet embeddings (mean over patches), for learned adapters."""
        return np.stack([self._run_patches(x)[1].mean(axis=0) for x in self._check(batch)]).astype(np.float32)

    # -- text -------------------------------------------------------------------------------------
    def embed_label_semantics(self, texts: Sequence[str]) -> np.ndarray:
        """MiniLM sentence embeddings [N, 384], mean-pooled and L2-normalised."""
        if self._minilm is None:
            from tokenizers import Tokenizer

            self._tok = Tokenizer.from_file(str(self.dir / "tokenizer.json"))
            self._tok.enable_truncation(128)
            self._tok.enable_padding(pad_id=0, pad_token="[PAD]")
            self._minilm = _session(self.dir / "minilm.onnx", self.threads, self.spinning)
        out = []
        texts = list(texts)
        for a in range(0, len(texts), 64):
            enc = self._tok.encode_batch(texts[a : a + 64])
            ids = np.array([e.ids for e in enc], dtype=np.int64)
            mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
            hidden = self._minilm.run(
                None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
            )[0]
            m = mask[:, :, None].astype(np.float32)
            out.append((hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1.0))
        return l2_normalise(np.concatenate(out))

    def class_embeddings(self) -> np.ndarray:
        if self._class_emb is None:
            phrases = [t.format(n) for n in self.class_names for t in CLASS_PHRASES]
            e = self.embed_label_semantics(phrases).reshape(len(self.class_names), len(CLASS_PHRASES), -1)
            self._class_emb = l2_normalise(e.mean(axis=1))
        return self._class_emb

    def embed_text(self, prompts: Sequence[str]) -> np.ndarray:
        """Prompts -> [P, 521] class-weight vectors (top-k softmax of MiniLM similarity)."""
        sims = self.embed_label_semantics(prompts) @ self.class_embeddings().T  # [P, 521]
        out = np.zeros_like(sims)
        for i, s in enumerate(sims):
            top = np.argsort(-s)[:TOP_K]
            w = np.exp((s[top] - s[top].max()) / TEMPERATURE)
            out[i, top] = w / w.sum()
        return l2_normalise(np.sqrt(out))
