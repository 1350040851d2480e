"""The exported CLAP (project's own export code) equals the torch model; the backend checks its files."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from cli_helpers import cli

from monitor.errors import ModelError
from monitor.files import sha256_file
from monitor.models.backend import Backend
from monitor.models.clap.encoder import ClapBackend

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

PROMPTS = ["This is a sound of dog.", "This is a sound of a rooster crowing.", "rain", "This is a sound of {}."]


@pytest.fixture(scope="module")
def torch_clap(tiny_clap_dir):
    model = transformers.ClapModel.from_pretrained(str(tiny_clap_dir)).eval()
    proc = transformers.ClapProcessor.from_pretrained(str(tiny_clap_dir))
    return model, proc


@pytest.fixture(scope="module")
def backend(tiny_clap_export):
    return ClapBackend.from_dir(tiny_clap_export, threads=1)


def _pooled(out):
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def test_backend_protocol_and_manifest(backend, tiny_clap_export, torch_clap):
    model, _ = torch_clap
    assert isinstance(backend, Backend)
    m = json.loads((tiny_clap_export / "manifest.json").read_text())
    assert m["kind"] == "clap"
    assert backend.sample_rate_hz == m["sample_rate"] == 48000
    assert backend.window_s == 5.0
    assert backend.embedding_dim == m["embedding_dim"] == 32
    # the scale ClapModel uses for logits_per_audio
    assert backend.logit_scale == pytest.approx(float(model.logit_scale_a.detach().exp()), rel=1e-6)
    assert m["audio"]["input_shape"] == ["batch", 1, 1001, 64]
    assert m["frontend"]["f_min_hz"] == 50.0 and m["frontend"]["padding"] == "repeatpad"
    assert max(m["max_abs_diff"].values()) < 1e-4
    expected = {"audio_encoder.onnx", "audio_encoder.int8.onnx", "text_encoder.onnx", "tokenizer.json"}
    assert expected <= set(m["files"])
    for name, digest in m["files"].items():
        assert sha256_file(tiny_clap_export / name) == digest
    assert len(backend.cache_key) == 64 and backend.cache_key[:8] in backend.name


def test_audio_embeddings_equal_torch(backend, torch_clap, demo_clips_48k):
    model, proc = torch_clap
    clips = [demo_clips_48k[k] for k in ("cat", "dog", "owl", "sheep")]
    got = np.concatenate([backend.embed_audio(c[None, :]) for c in clips])
    feats = proc.feature_extractor(clips, sampling_rate=48000, return_tensors="pt")
    with torch.no_grad():
        ref = torch.nn.functional.normalize(
            _pooled(model.get_audio_features(input_features=feats["input_features"])), dim=-1
        )
    np.testing.assert_allclose(got, ref.numpy(), rtol=0, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # the clips really embed differently (so the comparison above can fail)
    assert np.abs(got[0] - got[1]).max() > 1e-3


def test_batch_and_embed_features(backend):
    rng = np.random.default_rng(1)
    batch = (0.2 * rng.standard_normal((3, 5 * 48000))).astype(np.float32)
    joint = backend.embed_audio(batch)
    single = np.concatenate([backend.embed_audio(b[None]) for b in batch])
    np.testing.assert_allclose(joint, single, atol=1e-5)
    feats = backend.frontend.batch_features(batch)
    np.testing.assert_allclose(backend.embed_features(feats), joint, atol=1e-6)
    # more windows than one call takes (AUDIO_BATCH): split into several calls, some larger
    # than the usual size (whose arena is handed back); every row, and a single window
    # afterwards, stays the same
    from monitor.models.clap.encoder import AUDIO_BATCH

    many = np.concatenate([feats] * (AUDIO_BATCH // 3 + 2))
    assert many.shape[0] > AUDIO_BATCH
    np.testing.assert_allclose(
        backend.embed_features(many), np.concatenate([joint] * (AUDIO_BATCH // 3 + 2)), atol=1e-5
    )
    np.testing.assert_allclose(backend.embed_features(feats[:1]), single[:1], atol=1e-6)
    with pytest.raises(ValueError):
        backend.embed_features(feats[:, :, :1000])
    with pytest.raises(ValueError):
        backend.embed_features(feats.astype(np.int32))
    with pytest.raises(ValueError):
        backend.embed_audio(batch[0])  # 1-D: not a batch
    bad = batch.copy()
    bad[0, 10] = np.nan
    with pytest.raises(ValueError):
        backend.embed_audio(bad)


def test_only_calls_larger_than_usual_hand_their_arena_back(tiny_clap_export):
    from monitor.models.clap.encoder import USUAL_BATCH_CALLS

    b = ClapBackend.from_dir(tiny_clap_export, threads=1)
    # one source: single windows keep their arena, a catch-up of 4 hands its growth back
    assert [b._larger_than_usual(n) for n in (1, 1, 1, 4, 1, 3)] == [False, False, False, True, False, True]
    # two sources completing together become the usual size once they are most of the recent calls
    calls = [b._larger_than_usual(2) for _ in range(USUAL_BATCH_CALLS)]
    assert calls[0] is True and calls[-1] is False
    assert b._larger_than_usual(4) is True and b._larger_than_usual(1) is False


def test_long_clip_is_crop_average(backend):
    rng = np.random.default_rng(2)
    x = (0.2 * rng.standard_normal(23 * 48000)).astype(np.float32)
    L = 10 * 48000
    crops = np.stack([x[:L], x[L : 2 * L], x[-L:]])
    expected = backend.embed_audio(crops).mean(axis=0)
    expected /= np.linalg.norm(expected)
    np.testing.assert_allclose(backend.embed_audio(x[None]), expected[None], atol=1e-6)


def test_text_embeddings_equal_torch(backend, torch_clap):
    model, proc = torch_clap
    got = backend.embed_text(PROMPTS)
    enc = proc.tokenizer(PROMPTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = torch.nn.functional.normalize(_pooled(model.get_text_features(**enc)), dim=-1)
    np.testing.assert_allclose(got, ref.numpy(), rtol=0, atol=1e-4)
    # one prompt alone (no padding) gives the same vector as inside a padded batch
    np.testing.assert_allclose(backend.embed_text(PROMPTS[2:3]), got[2:3], atol=1e-5)
    assert np.abs(got[0] - got[1]).max() > 1e-3


def test_int8_encoder(tiny_clap_export, backend, demo_clips_48k):
    b8 = ClapBackend.from_dir(tiny_clap_export, threads=1, int8=True)
    assert b8.cache_key != backend.cache_key and "int8" in b8.name
    x = demo_clips_48k["dog"][None, :]
    cos = float(np.sum(b8.embed_audio(x) * backend.embed_audio(x)))
    assert cos > 0.99


def test_corrupt_or_missing_files(tiny_clap_export, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_clap_export, bad)
    assert ClapBackend.from_dir(bad)._audio_file == "audio_encoder.opt.onnx"  # the optimised graph first
    for name in ("audio_encoder.opt.onnx", "audio_encoder.onnx"):
        data = bytearray((bad / name).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (bad / name).write_bytes(bytes(data))
        with pytest.raises(ModelError, match="does not match manifest"):
            ClapBackend.from_dir(bad)
        if name.endswith(".opt.onnx"):
            (bad / name).unlink()  # without it the plain graph is loaded (and checked)
    (bad / "audio_encoder.onnx").unlink()
    with pytest.raises(ModelError, match="missing"):
        ClapBackend.from_dir(bad)
    (bad / "manifest.json").write_text("{not json")
    with pytest.raises(ModelError, match="unreadable"):
        ClapBackend.from_dir(bad)
    with pytest.raises(ModelError, match="not found"):
        ClapBackend.from_dir(tmp_path / "nowhere")
    # a replaced text encoder is caught when it is first used
    txt = tmp_path / "txt"
    shutil.copytree(tiny_clap_export, txt)
    (txt / "text_encoder.onnx").write_bytes(b"not a model")
    b = ClapBackend.from_dir(txt)
    with pytest.raises(ModelError, match="text_encoder.onnx"):
        b.embed_text(["dog"])


def _cli(*args, state, env_extra=None):
    return cli(*args, state=state, env_extra=env_extra)


@pytest.mark.slow  # about 10-30 s: a whole model or a real device
def test_export_cli_local_dir(tiny_clap_dir, tmp_path):
    out = tmp_path / "exported"
    r = _cli("export", "--model", str(tiny_clap_dir), "--out", str(out), state=tmp_path / "state")
    assert r.returncode == 0, r.stderr
    assert "max |onnx - torch|" in r.stdout
    assert "[export] exporting the audio encoder" in r.stderr
    m = json.loads((out / "manifest.json").read_text())
    assert m["source"] == str(tiny_clap_dir) and m["int8"] is None
    assert "audio_encoder.int8.onnx" not in m["files"]
    import onnx

    onnx.checker.check_model(str(out / "audio_encoder.onnx"))


@pytest.mark.parametrize(
    "args, needle",
    [
        (("export", "--model", "laion/clap-htsat-unfused"), "huggingface-cli download laion/clap-htsat-unfused"),
        (("export", "--model", "/nonexistent/clap-dir"), "no such directory"),
    ],
)
def test_export_cli_errors(args, needle, tmp_path):
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0"}
    r = _cli(*args, "--out", str(tmp_path / "out"), state=tmp_path / "state", env_extra=env)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert needle in lines[0]
    assert "Traceback" not in r.stderr


def test_export_rewrites_the_time_stretch_and_saves_optimised_graphs(tiny_clap_export):
    import json

    import onnx

    manifest = json.loads((tiny_clap_export / "manifest.json").read_text())
    audio = manifest["audio"]
    assert audio["graph_rewrites"], "HTSAT's 1001 -> 1024 frame Resize should become a MatMul"
    graph = onnx.load(str(tiny_clap_export / audio["file"])).graph
    assert not [n for n in graph.node if n.op_type == "Resize"]
    assert {n.name for n in graph.node if n.op_type == "MatMul"} >= set(audio["graph_rewrites"])
    # the optimised copies are listed, hashed, and are what the backend loads
    assert audio["optimized"] == {
        "audio_encoder.onnx": "audio_encoder.opt.onnx",
        "audio_encoder.int8.onnx": "audio_encoder.int8.opt.onnx",
    }
    for f in audio["optimized"].values():
        assert f in manifest["files"]
    assert manifest["max_abs_diff"]["audio"] < 1e-4  # measured after the rewrite


def test_the_model_folder_contract_is_one_type_with_one_writer(tiny_clap_export, tmp_path):
    """export, the msclap export and the fetch all write manifest.json through ClapManifest;
    the encoder reads it through the same type (checked fields, provenance kept as written)."""
    import json
    import shutil

    from monitor.errors import ModelError
    from monitor.models.clap.manifest import ClapManifest

    folder = tmp_path / "m"
    shutil.copytree(tiny_clap_export, folder)
    data = json.loads((folder / "manifest.json").read_text())
    m = ClapManifest.read(folder)
    assert m.to_dict() == data  # every key as written, the provenance included
    assert m.extra["max_abs_diff"]["audio"] < 1e-4 and m.audio["file"] == "audio_encoder.onnx"
    (folder / "int8-choice.json").write_text("{}")  # the runtime's own file: never listed
    again = m.write(folder)
    assert "int8-choice.json" not in again.files and again.files == m.files
    for broken, why in (
        ({k: v for k, v in data.items() if k != "embedding_dim"}, "no 'embedding_dim'"),
        ({**data, "logit_scale": -1}, "must be positive"),
        ({**data, "text": {**data["text"], "tokenizer": None}}, "text.tokenizer is not a file name"),
        ({**data, "format_version": 99}, "newer than this program"),
    ):
        with pytest.raises(ModelError, match=why):
            ClapManifest.from_dict(broken, "x/manifest.json")
