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

    from monitor.adapt import Adapter, maybe_adapt
    from monitor.clap.encoder import ClapBackend

    base = ClapBackend.from_dir(tiny_clap_export)
    ad = Adapter.load(path)
    assert ad.meta["theta"] == "audio" and ad.d_a == ad.d_s == base.embedding_dim
    wrapped = maybe_adapt(base, path)
    x = np.random.default_rng(0).normal(scale=0.1, size=(2, base.sample_rate_hz * 5)).astype(np.float32)
    # the streaming path (embed_windows) and embed_audio give the same θ̂ through the wrapper
    assert hasattr(wrapped, "embed_windows")
    theta = wrapped.embed_audio(x)
    assert theta == pytest.approx(ad.prep(base.embed_audio(x)), abs=1e-5)
    assert np.linalg.norm(theta, axis=1) == pytest.approx(1.0, abs=1e-5)
