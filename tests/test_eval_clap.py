"""eval and adapters on the CLAP path (tiny random export): the model's own text encoder as φ."""

from __future__ import annotations

import json

import numpy as np
import pytest


def test_eval_and_adapter_on_tiny_clap(tmp_path, tiny_clap_export, demo_dir, capsys, monkeypatch):
    from monitor.cli import main

    monkeypatch.setenv("SOUND_MONITOR_STATE", str(tmp_path / "state"))
    # the bundled animal clips (10 classes); a labels.csv folder dataset
    assert (demo_dir / "labels.csv").is_file()
    assert main(["eval", str(demo_dir), "--model", str(tiny_clap_export), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_classes"] == 10 and out["chance_map"] == pytest.approx(0.2929, abs=1e-4)
    assert 0.0 <= out["top1"] <= 1.0 and out["map"] >= 0.1  # random weights: any ranking, never below 1/C

    path = tmp_path / "clap-bilinear.npz"
    assert (
        main(
            [
                "eval",
                str(demo_dir),
                "--model",
                str(tiny_clap_export),
                "--protocol",
                "class-folds",
                "--folds",
                "3",
                "--adapter",
                "bilinear",
                "--save-adapter",
                str(path),
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["semantic"] == "text" and len(out["folds"]) == 3

    from monitor.evaluation.training import Adapter, maybe_adapt
    from monitor.models.clap.encoder import ClapBackend

    base = ClapBackend.from_dir(tiny_clap_export)
    ad = Adapter.load(path)
    assert ad.meta["theta"] == "audio" and ad.d_a == ad.d_s == base.embedding_dim
    wrapped = maybe_adapt(base, path)
    x = np.random.default_rng(0).normal(scale=0.1, size=(2, base.sample_rate_hz * 5)).astype(np.float32)
    theta = wrapped.embed_audio(x)
    assert theta == pytest.approx(ad.prep(base.embed_audio(x)), abs=1e-5)
    assert np.linalg.norm(theta, axis=1) == pytest.approx(1.0, abs=1e-5)
    # the streaming path through the wrapper: overlapping windows of one stream, prepared by
    # the base CLAP's per-stream front-end, batched by the encoder stage, equal embed_audio
    from monitor.stream.shared_encoder import SharedEncoder
    from monitor.types import Window

    rate = base.sample_rate_hz
    stream = np.random.default_rng(1).normal(scale=0.1, size=rate * 9).astype(np.float32)
    wins = [Window(i, stream[i * rate : i * rate + 5 * rate], rate, float(i), i + 5.0, -20.0) for i in range(5)]
    enc = SharedEncoder(wrapped, linger_s=0.0)
    got = np.concatenate([enc.embed(wins[:2], "s"), enc.embed(wins[2:], "s")])
    enc.close()
    want = wrapped.embed_audio(np.stack([w.samples for w in wins]))
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert "s" in base._streams  # the per-stream front-end lives in the base CLAP backend, once
    wrapped.end_stream("s")
    assert "s" not in base._streams
