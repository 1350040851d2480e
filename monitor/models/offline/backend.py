"""The offline backend: YAMNet (AudioSet, 521 classes) + MiniLM text encoder, from PyPI.

One 521-d space serves audio and text.

- Audio: each window (or clip) is first brought to a fixed RMS level (the level stage,
  monitor/models/level.py: YAMNet is not level-invariant and real microphones are quiet); then
  YAMNet's class probabilities, pooled over the window's 0.96 s patches (max of sigmoid),
  square-root compressed, L2-normalised. All patches of a batch of windows go through the
  graph in one run (the fetched graph's batch of 1 is made symbolic when it is loaded;
  outputs are bit-identical to one patch per run).
- Text: a label (its bare text: no prompt template) is embedded with MiniLM and compared
  with the 521 classes, each embedded as its ontology text (monitor/models/offline/audioset_classes.json,
  from the AudioSet ontology, CC BY-SA 4.0): the mean of its names, the mean of "NAME, a
  kind of PARENT" phrasings, and its description, each unit-normalised, summed. The
  ``TOP_K`` most similar classes get softmax weights with ``TEMPERATURE``; the label's
  vector is the square root of those weights, L2-normalised.

A label's logit is ``logit_scale * cos(audio, text)``: the normalised probability mass of
the classes the label means. Prototypes (mean of audio vectors of example clips) live in
the same space. The class-text parameters were chosen by validation on held-out classes
(``scripts/choose_offline_text.py``; figures in README and notes/issue17.md) and are part
of the cache key, so cached label vectors are remade when they change.

tokenizers and onnxruntime (through monitor/models/ort.py) are imported inside the functions that
need them.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from monitor.errors import ModelError
from monitor.files import atomic_savez, read_manifest, write_bytes_atomic, write_json_atomic
from monitor.logs import say as _say
from monitor.models.backend import Backend, l2_normalise
from monitor.models.level import LevelNorm
from monitor.models.offline import features
from monitor.models.offline.fetch import FILES, default_dir, fetch_offline, is_complete, sha256_file

log = logging.getLogger(__name__)

TOP_K = 20  # chosen by validation: scripts/choose_offline_text.py
TEMPERATURE = 0.03
CLASS_TEXT = "names+kind-of-parent+description"  # how a class is described (part of the cache key)
ONTOLOGY = Path(__file__).resolve().parent / "audioset_classes.json"
MAX_PATCHES_PER_RUN = 64  # bounds the graph's working memory (a 5 s window has 9 patches)
DEFAULT_LEVEL = LevelNorm()


@dataclass(frozen=True)
class TextMapping:
    """How a label's text becomes a class-weight vector: its ``top_k`` most similar classes,
    softmax weights at ``temperature``."""

    top_k: int = TOP_K
    temperature: float = TEMPERATURE

    @property
    def key(self) -> str:
        return f"{CLASS_TEXT}/top{self.top_k}/T{self.temperature:g}"


def _session(model: Path | bytes, threads: int, spinning: bool, what: str) -> Any:
    from monitor.models.ort import session

    try:
        return session(model, threads, spinning=spinning)
    except ModelError:
        raise
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise ModelError(f"cannot load {what}: {str(e).splitlines()[0]}") from None


def batched_yamnet(path: Path) -> bytes:
    """The fetched YAMNet graph with a symbolic batch: its input/outputs' first dimension
    made ``batch`` and the post-pooling Reshape's fixed ``[1, -1]`` made ``[-1, 1024]``.
    Each patch is computed independently, so outputs equal one-patch runs bit for bit."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    g = model.graph
    for v in list(g.input) + list(g.output):
        dim = v.type.tensor_type.shape.dim[0]
        dim.ClearField("dim_value")
        dim.dim_param = "batch"
    inits = {i.name: i for i in g.initializer}
    fixed = 0
    for node in g.node:
        shape = inits.get(node.input[1]) if node.op_type == "Reshape" and len(node.input) > 1 else None
        if shape is not None and numpy_helper.to_array(shape).tolist() == [1, -1]:
            shape.CopyFrom(numpy_helper.from_array(np.array([-1, 1024], np.int64), shape.name))
            fixed += 1
    if fixed != 1:
        raise ModelError(f"{path}: unexpected YAMNet graph ({fixed} batch-1 reshapes); delete it and fetch again")
    return model.SerializeToString()


BATCHED = "yamnet-batched.onnx"  # made from yamnet.onnx on the first load, kept beside it


def batched_yamnet_kept(directory: Path, source_sha256: str) -> Path | bytes:
    """``batched_yamnet`` of ``directory/yamnet.onnx``, made once and kept beside it as
    ``yamnet-batched.onnx`` with ``yamnet-batched.json`` (its sha256 and its source's).

    Making it imports onnx, which took more CPU than the rest of a start (about 2 of 3 s): a
    later start checks the kept file against both hashes and loads it instead. A folder that
    cannot be written (a read-only install) gets the graph made in memory at every start."""
    kept, meta = directory / BATCHED, directory / "yamnet-batched.json"
    try:
        m = json.loads(meta.read_text())
        if m.get("source_sha256") == source_sha256 and kept.is_file() and sha256_file(kept) == m.get("sha256"):
            return kept
    except (OSError, ValueError, AttributeError):
        pass  # not made yet, or unreadable: made again below
    data = batched_yamnet(directory / "yamnet.onnx")
    try:
        write_bytes_atomic(kept, data)
        write_json_atomic(meta, {"source_sha256": source_sha256, "sha256": hashlib.sha256(data).hexdigest()})
    except OSError as e:
        log.debug("batched YAMNet not kept in %s (%s): made at every start", directory, e)
    return data


def class_texts(class_map: Sequence[dict], ontology: dict[str, dict]) -> list[tuple[list[str], list[str], str]]:
    """Per class: (its names, "NAME, a kind of PARENT" phrasings, its description).

    A display name such as "Child speech, kid speaking" lists synonyms; a class the ontology
    does not know (or without parents / description) falls back to its names."""
    out = []
    for row in class_map:
        entry = ontology.get(row["mid"], {})
        names = [n.strip() for n in row["display_name"].split(", ") if n.strip()] or [row["display_name"]]
        kinds = [f"{n}, a kind of {p.lower()}" for n in names for p in entry.get("parents", ())] or names
        out.append((names, kinds, entry.get("description") or row["display_name"]))
    return out


def load_ontology(path: Path = ONTOLOGY) -> dict[str, dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelError(f"the bundled class text {path} is unreadable ({e}); reinstall sound-monitor") from None
    return {c["id"]: c for c in data["classes"]}


class OfflineBackend(Backend):
    name = "offline-yamnet-minilm"
    sample_rate_hz = features.SAMPLE_RATE_HZ
    window_s = 5.0
    embedding_dim = 521
    crop_s = None  # class probabilities are pooled over every 0.96 s patch of the clip
    has_audio_features = True  # YAMNet's 1024-d patch embeddings (learned adapters, prototypes)
    has_label_semantics = True  # MiniLM sentence vectors of label names
    prompt_templates = False  # labels are matched to the classes' text by their bare names
    supports_level_norm = True
    level_norm_default = True  # YAMNet is not level-invariant
    logit_scale = 10.0

    def __init__(
        self,
        directory: Path,
        threads: int = 2,
        spinning: bool = False,
        level: LevelNorm | None = DEFAULT_LEVEL,
        text: TextMapping = TextMapping(),
    ):
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
        self.level = level
        self.text = text
        self._ontology_key = f"{CLASS_TEXT}/{sha256_file(ONTOLOGY)[:16]}"
        parts = [
            json.dumps(manifest["files"], sort_keys=True),
            self._ontology_key,
            text.key,
            level.key if level else "raw",
        ]
        self.cache_key = "offline-" + hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
        self.threads = threads
        self.spinning = bool(spinning)
        yamnet = self.dir / "yamnet.onnx"
        graph = batched_yamnet_kept(self.dir, manifest["files"]["yamnet.onnx"])
        self._yamnet = _session(graph, threads, self.spinning, what=str(yamnet))
        self._minilm: Any = None  # onnxruntime session, loaded on first use
        self._tok: Any = None  # tokenizers.Tokenizer, loaded on first use
        with open(self.dir / "yamnet_class_map.csv", newline="", encoding="utf-8") as f:
            self.class_map = list(csv.DictReader(f))
        self.class_names = [row["display_name"] for row in self.class_map]
        self._class_emb: np.ndarray | None = None

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def from_dir(
        cls,
        path: str | Path,
        threads: int = 2,
        spinning: bool = False,
        level: LevelNorm | None = DEFAULT_LEVEL,
        text: TextMapping = TextMapping(),
    ) -> OfflineBackend:
        return cls(Path(path), threads, spinning, level, text)

    @classmethod
    def load(
        cls,
        threads: int = 2,
        cache_dir: str | Path | None = None,
        models_dir: str | Path | None = None,
        fetch: bool = True,
        spinning: bool = False,
        level: LevelNorm | None = DEFAULT_LEVEL,
    ) -> OfflineBackend:
        target = Path(cache_dir) if cache_dir else default_dir(models_dir)
        if not is_complete(target):
            if not fetch:
                raise ModelError(f"the offline model is not in {target}; run `sound-monitor models fetch offline`")
            fetch_offline(target, say=_say)
        return cls(target, threads, spinning, level)

    # -- audio ---------------------------------------------------------------------------------
    def _run_patches(self, batch: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Clips [B, n] -> per clip (class logits [p, 521], embeddings [p, 1024]) of its
        0.96 s patches; the patches of all clips go through the graph together."""
        per_clip = [features.patches(x) for x in batch]
        allp = np.concatenate(per_clip)[:, None].astype(np.float32)  # [P, 1, 96, 64]
        logits, emb = [], []
        for a in range(0, len(allp), MAX_PATCHES_PER_RUN):
            out = self._yamnet.run(None, {"audio": allp[a : a + MAX_PATCHES_PER_RUN]})
            logits.append(out[0])
            emb.append(out[1])
        lg, em = np.concatenate(logits), np.concatenate(emb)
        bounds = np.cumsum([0] + [len(p) for p in per_clip])
        return [(lg[a:b], em[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]

    def _check(self, batch: np.ndarray) -> np.ndarray:
        """[B, n] (or [n]) audio as the model takes it: float32, through the level stage."""
        b = np.asarray(batch, dtype=np.float32)
        if b.ndim == 1:
            b = b[None]
        if b.ndim != 2:
            raise ValueError(f"expected [batch, samples] audio, got shape {b.shape}")
        return self.level.apply(b) if self.level is not None else b

    @staticmethod
    def _probs(runs: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        """Per clip: the class probabilities pooled over its patches (max of sigmoid) [B, 521]."""
        return np.stack([(1.0 / (1.0 + np.exp(-np.clip(lg, -60.0, 60.0)))).max(axis=0) for lg, _ in runs]).astype(
            np.float32
        )

    @staticmethod
    def _features(runs: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        """Per clip: the mean of its patches' embeddings [B, 1024]."""
        return np.stack([em.mean(axis=0) for _, em in runs]).astype(np.float32)

    def class_probabilities(self, batch: np.ndarray) -> np.ndarray:
        """[B, n] -> [B, 521] pooled AudioSet class probabilities (max over patches)."""
        return self._probs(self._run_patches(self._check(batch)))

    def embed_audio(self, batch: np.ndarray) -> np.ndarray:
        return l2_normalise(np.sqrt(self.class_probabilities(batch)))

    def embed_audio_features(self, batch: np.ndarray) -> np.ndarray:
        """[B, n] -> [B, 1024] YAMNet embeddings (mean over patches), for learned adapters."""
        return self._features(self._run_patches(self._check(batch)))

    def embed_audio_and_features(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Both from one YAMNet pass (residual adapters need the two)."""
        runs = self._run_patches(self._check(batch))
        return l2_normalise(np.sqrt(self._probs(runs))), self._features(runs)

    # -- text -------------------------------------------------------------------------------------
    def embed_label_semantics(self, texts: Sequence[str]) -> np.ndarray:
        """MiniLM sentence embeddings [N, 384], mean-pooled and L2-normalised."""
        if self._minilm is None:
            from tokenizers import Tokenizer

            self._tok = Tokenizer.from_file(str(self.dir / "tokenizer.json"))
            self._tok.enable_truncation(128)
            self._tok.enable_padding(pad_id=0, pad_token="[PAD]")
            minilm = self.dir / "minilm.onnx"
            self._minilm = _session(minilm, self.threads, self.spinning, what=str(minilm))
        texts = list(texts)
        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        # batches of similar length (padding costs as much as text); results in input order
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros((len(texts), 384), dtype=np.float32)
        for a in range(0, len(order), 64):
            idx = order[a : a + 64]
            enc = self._tok.encode_batch([texts[i] for i in idx])
            ids = np.array([e.ids for e in enc], dtype=np.int64)
            mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
            hidden = self._minilm.run(
                None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
            )[0]
            m = mask[:, :, None].astype(np.float32)
            out[idx] = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1.0)
        return l2_normalise(out)

    def class_embeddings(self) -> np.ndarray:
        """[521, 384] MiniLM vectors of the classes' ontology text (see the module doc),
        kept next to the model files once made (about 2,400 sentences)."""
        if self._class_emb is not None:
            return self._class_emb
        files = json.dumps(read_manifest(self.dir / "manifest.json").get("files", {}), sort_keys=True)
        key = hashlib.sha256((self._ontology_key + "|" + files).encode()).hexdigest()[:16]
        cached = self.dir / f"class-text-{key}.npz"
        try:
            with np.load(cached, allow_pickle=False) as z:
                e = np.asarray(z["emb"], dtype=np.float32)
            if e.shape[0] == len(self.class_names) and np.isfinite(e).all():
                self._class_emb = e
                return e
        except (OSError, ValueError, KeyError):
            pass
        texts = class_texts(self.class_map, load_ontology())
        flat = [t for names, kinds, desc in texts for t in (*names, *kinds, desc)]
        vecs = self.embed_label_semantics(flat)
        rows, i = [], 0
        for names, kinds, _ in texts:
            n, k = len(names), len(kinds)
            parts = (vecs[i : i + n].mean(axis=0), vecs[i + n : i + n + k].mean(axis=0), vecs[i + n + k])
            rows.append(sum(l2_normalise(p) for p in parts))
            i += n + k + 1
        self._class_emb = l2_normalise(np.stack(rows))
        try:
            atomic_savez(cached, "class-text-", emb=self._class_emb)
        except OSError as e:  # a read-only model folder: made again next start
            log.debug("class text vectors not kept in %s: %s", self.dir, e)
        return self._class_emb

    def embed_text(self, prompts: Sequence[str]) -> np.ndarray:
        """Label texts -> [P, 521] class-weight vectors (top-k softmax of MiniLM similarity)."""
        sims = self.embed_label_semantics(prompts) @ self.class_embeddings().T  # [P, 521]
        out = np.zeros_like(sims)
        for i, s in enumerate(sims):
            top = np.argsort(-s)[: self.text.top_k]
            w = np.exp((s[top] - s[top].max()) / self.text.temperature)
            out[i, top] = w / w.sum()
        return l2_normalise(np.sqrt(out))
