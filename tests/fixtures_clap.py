"""Fixtures for the CLAP tests (session-scoped: building and exporting take a few seconds).

- ``tiny_clap_dir``: a tiny randomly initialised ClapModel + ClapProcessor saved with
  ``save_pretrained`` (byte-level BPE tokenizer trained offline, wrapped as
  RobertaTokenizerFast; weights re-drawn with a larger std so that scores differ). Loads
  wherever a real checkpoint does, the transformers pipeline included.
- ``tiny_clap_export``: that checkpoint exported by the project's own export code
  (``monitor.models.clap.export.export_clap``, with ``--int8``) into a tmp dir: audio/text ONNX,
  tokenizer, manifest.json. Pass it as ``--model`` or to ``ClapBackend.from_dir``.
- ``demo_clips_48k``: the bundled animal clips read and resampled to 48 kHz by
  ``monitor.audio_io.read_audio`` as {name: float32 array}.
"""

from __future__ import annotations

from pathlib import Path

import pytest

DEMO_DIR = Path(__file__).resolve().parents[1] / "monitor" / "demo"


@pytest.fixture(scope="session")
def tiny_clap_dir(tmp_path_factory) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from clap_factories import make_random_checkpoint

    return make_random_checkpoint(tmp_path_factory.mktemp("tiny-clap-hf") / "ckpt", size="tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_clap_export(tiny_clap_dir: Path, tmp_path_factory) -> Path:
    pytest.importorskip("onnx")
    from monitor.models.clap.export import export_clap

    out = tmp_path_factory.mktemp("tiny-clap-onnx") / "model"
    export_clap(str(tiny_clap_dir), out, int8=True, progress=None)
    return out


@pytest.fixture(scope="session")
def demo_clips_48k() -> dict[str, object]:
    from monitor.audio_io import read_audio

    return {p.stem: read_audio(p, 48000).samples for p in sorted(DEMO_DIR.glob("*.mp3"))}
