"""The interface every model backend implements, and how a model spec becomes a backend.

A backend maps audio and text into one embedding space:

- ``embed_audio(batch)``: float32 [B, n] mono at ``sample_rate_hz`` -> [B, D], L2-normalised
- ``embed_text(prompts)``: list of P strings -> [P, D], L2-normalised

A label's logit against a window is ``logit_scale * cos(audio, label)``; the scorer turns
logits into scores. Prototype labels (``enroll``) are means of ``embed_audio`` vectors, so
they live in the same space. Heavy imports (onnxruntime, tokenizers) stay in the backend
modules; this module only dispatches.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Backend(Protocol):
    name: str  # appears in events ("model") and manifests
    sample_rate_hz: int
    window_s: float
    embedding_dim: int
    logit_scale: float
    cache_key: str  # changes whenever the weights change (e.g. sha256 of the ONNX files)
    # clips longer than this are embedded as the mean of consecutive crops of this length
    # (the last one ending at the clip's end; see monitor.clap.frontend.crop_starts), so a
    # long file can be embedded crop by crop; None: the whole clip at once
    crop_s: float | None

    def embed_audio(self, batch: np.ndarray) -> np.ndarray: ...

    def embed_text(self, prompts: Sequence[str]) -> np.ndarray: ...


def l2_normalise(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.maximum(n, 1e-12)
