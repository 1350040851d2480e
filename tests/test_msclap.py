"""Microsoft CLAP (msclap 2022 / 2023) through export -> ONNX -> monitor, on randomly
initialised msclap models built offline (tests/msclap_helpers.py) and served by a local
stand-in of the hub (tests/hub_stub.py, HF_ENDPOINT):

- the exported audio graph (+ the numpy front-end) equals msclap's own torch model, with its
  torchlibrosa front-end, on waveforms within 1e-4; the text graph equals its text encoder;
- `classify --json` equals msclap's similarity + softmax (as CLAPWrapper computes them) on
  the same clips within 1e-4;
- a streamed `run` scores each window as `classify` scores that slice.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from cli_helpers import cli
from hub_stub import HubStub
from msclap_helpers import hub_layout, manifest

from monitor.audio_io import read_audio

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "monitor" / "demo"
LABELS = ["dog barking", "rooster", "rain", "silence"]
TEMPLATE = "This is a sound of {}."


@pytest.fixture(scope="module", autouse=True)
def _msclap_installed():
    """Without msclap (or torch / torchlibrosa) the Microsoft CLAP export cannot work: a failure
    that says what to install, not a skip."""
    missing = [m for m in ("torch", "torchlibrosa", "msclap") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not installed: `make install-test` installs them "
            '(msclap with pip --no-deps, README "Microsoft CLAP")'
        )


@pytest.fixture(scope="module", params=["2023", "2022"])
def exported(request, tmp_path_factory):
    """(version, export dir, hub folders, environment) per msclap version, exported through
    the real download path from the stand-in hub."""
    version = request.param
    root = tmp_path_factory.mktemp(f"msclap-{version}")
    repos = hub_layout(root / "repos", version)
    stub = HubStub()
    for repo, folder in repos.items():
        stub.add_repo(repo, "0123456789abcdef0123456789abcdef01234567", folder)
    with stub:
        env = {
            "HF_ENDPOINT": stub.url,
            "HF_HOME": str(root / "hf-home"),
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_OFFLINE": "0",
        }
        out = root / "export"
        r = cli(
            "export",
            "--model",
            f"msclap:{version}",
            "--out",
            str(out),
            state=root / "state",
            env_extra=env,
            timeout=900,
        )
        assert r.returncode == 0, r.stderr[-3000:]
    yield version, out, repos, r


@pytest.fixture(scope="module")
def reference(exported):
    from monitor.models.clap.msclap_export import VERSIONS, reference_model

    version, _out, repos, _r = exported
    weights = repos["microsoft/msclap"] / VERSIONS[version].weights
    model, v = reference_model(weights, repos[VERSIONS[version].text_repo])
    assert v == version
    return model


def test_manifest_and_self_checks(exported):
    version, out, _repos, r = exported
    m = manifest(out)
    assert m["family"] == "msclap" and m["name"] == f"msclap-{version}"
    assert m["source"] == f"msclap:{version}" and m["source_revision"] == "0123456789abcdef0123456789abcdef01234567"
    fe = m["frontend"]
    assert fe["sample_rate_hz"] == 44100 and fe["hop_length"] == 320 and fe["n_mels"] == 64
    if version == "2023":  # HTSAT: 7 s windows, mel filters laid out for 32 kHz (msclap's models/config.py)
        assert m["window_s"] == 7.0 and fe["mel_rate_hz"] == 32000 and fe["f_max_hz"] == 14000
        assert m["text"]["suffix"] == " <|endoftext|>" and m["text"]["pad_token_id"] == 0
        assert m["text"]["max_tokens"] == 77
    else:  # Cnn14: 5 s, 50-14000 Hz at the audio's rate; BERT [CLS]
        assert m["window_s"] == 5.0 and fe["mel_rate_hz"] is None and fe["f_max_hz"] == 14000
        assert m["text"]["suffix"] == "" and m["text"]["max_tokens"] == 100
    d = m["max_abs_diff"]
    assert d["audio"] < 1e-4 and d["text"] < 1e-4 and d["waveform_to_embedding"] < 1e-4
    assert d["frontend_db_float64"] < 1e-4 and d["frontend_db"] < 1e-3  # float32 torchlibrosa: its own rounding
    assert "front-end max |numpy - torchlibrosa|" in r.stderr


def _clips_44k(tmp_path: Path, seconds: float | None = None) -> list[Path]:
    """The demo recordings at 44.1 kHz, 16-bit (both sides read the same samples)."""
    out = []
    for f in sorted(DEMO.glob("*.mp3"))[:4]:
        x = read_audio(f, 44100).samples
        if seconds:
            x = x[: int(seconds * 44100)]
        p = tmp_path / f"{f.stem}.wav"
        sf.write(p, x, 44100, subtype="PCM_16")
        out.append(p)
    return out


def _msclap_scores(model, tokenizer_dir: Path, version: str, clips: list[Path], prompts: list[str]) -> np.ndarray:
    """What msclap's CLAPWrapper computes (its text preprocessing, its repeat-to-duration,
    compute_similarity, softmax), written against msclap's model object: the wrapper itself
    imports torchaudio."""
    import torch
    from transformers import AutoTokenizer

    from monitor.models.clap.msclap_export import _msclap_config

    args = _msclap_config(version)
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    gpt = "gpt" in args["text_model"]
    if gpt:
        tok.add_special_tokens({"pad_token": "!"})
    rows = [  # the wrapper's encode_plus (gone from transformers 5) is the one-text form of __call__
        tok(
            p + (" <|endoftext|>" if gpt else ""),
            add_special_tokens=True,
            max_length=args["text_len"],
            padding="max_length",
            return_tensors="pt",
        )
        for p in prompts
    ]
    keys = ["input_ids", "attention_mask"] + ([] if gpt else ["token_type_ids"])
    batch = {k: torch.cat([r[k] for r in rows]) for k in keys}
    n = int(args["duration"] * args["sampling_rate"])
    waves = []
    for c in clips:
        x, sr = sf.read(str(c), dtype="float32")
        assert sr == args["sampling_rate"] and x.size <= n
        x = np.tile(x, int(np.ceil(n / x.size)))[:n]
        waves.append(x)
    with torch.no_grad():
        text = model.caption_encoder(batch)
        audio = model.audio_encoder(torch.from_numpy(np.stack(waves)))[0]
        audio = audio / torch.norm(audio, dim=-1, keepdim=True)
        text = text / torch.norm(text, dim=-1, keepdim=True)
        sim = (model.logit_scale.exp() * text @ audio.T).T
        return torch.softmax(sim, dim=-1).numpy()


def test_exported_graphs_equal_msclap_torch(exported, reference):
    import torch

    from monitor.models.clap.encoder import ClapBackend

    version, out, repos, _r = exported
    backend = ClapBackend.from_dir(out)
    assert backend.window_s == manifest(out)["window_s"] and backend.sample_rate_hz == 44100
    rng = np.random.default_rng(5)
    n = int(backend.window_s * 44100)
    t = np.arange(n) / 44100
    waves = np.stack(
        [
            0.05 * rng.standard_normal(n),
            0.3 * np.sin(2 * np.pi * 440 * t) * (t % 1 < 0.5),
            0.01 * rng.standard_normal(n),
        ]
    ).astype(np.float32)
    got = backend.embed_audio(waves)
    with torch.no_grad():
        ref = reference.audio_encoder(torch.from_numpy(waves))[0].numpy()
    ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    assert np.abs(got - ref).max() < 1e-4
    assert np.abs(ref[0] - ref[1]).max() > 1e-2  # different sounds, different embeddings
    prompts = ["This is a sound of dog barking.", "rain", "a much longer prompt about a door knock and speech"]
    from monitor.models.clap.msclap_export import VERSIONS

    text_ref = _msclap_text(reference, repos[VERSIONS[version].text_repo], version, prompts)
    assert np.abs(backend.embed_text(prompts) - text_ref).max() < 1e-4


def _msclap_text(model, tokenizer_dir: Path, version: str, prompts: list[str]) -> np.ndarray:
    import torch
    from transformers import AutoTokenizer

    from monitor.models.clap.msclap_export import _msclap_config

    args = _msclap_config(version)
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    gpt = "gpt" in args["text_model"]
    if gpt:
        tok.add_special_tokens({"pad_token": "!"})
    enc = tok(
        [p + (" <|endoftext|>" if gpt else "") for p in prompts],
        max_length=args["text_len"],
        padding="max_length",
        return_tensors="pt",
    )
    with torch.no_grad():
        e = model.caption_encoder({k: enc[k] for k in ("input_ids", "attention_mask")}).numpy()
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def test_classify_equals_msclap_similarity_softmax(exported, reference, tmp_path):
    from monitor.models.clap.msclap_export import VERSIONS

    version, out, repos, _r = exported
    window = manifest(out)["window_s"]
    clips = _clips_44k(tmp_path, seconds=window)
    r = cli(
        "classify", *map(str, clips), "--model", str(out), "--labels", ",".join(LABELS), "--json", state=tmp_path / "s"
    )
    assert r.returncode == 0, r.stderr
    got = np.array(
        [[{s["label"]: s["score"] for s in o["scores"]}[lab] for lab in LABELS] for o in json.loads(r.stdout)]
    )
    want = _msclap_scores(
        reference, repos[VERSIONS[version].text_repo], version, clips, [TEMPLATE.format(lab) for lab in LABELS]
    )
    assert np.abs(got - want).max() < 1e-4
    assert (want.max(axis=1) - want.min(axis=1)).min() > 1e-3  # the labels' scores differ: the check can fail


def test_streamed_run_equals_classify_of_the_slices(exported, tmp_path):
    version, out, _repos, _r = exported
    window = manifest(out)["window_s"]
    x = np.concatenate([read_audio(f, 44100).samples for f in sorted(DEMO.glob("*.mp3"))[:3]])
    x = x[: int((window + 3) * 44100)]  # four windows at a 1 s hop
    stream = tmp_path / "stream.wav"
    sf.write(stream, x, 44100, subtype="FLOAT")
    scores = tmp_path / "scores.jsonl"
    r = cli(
        "run", "--source", str(stream), "--fast", "--no-tui", "--model", str(out), "--labels", ",".join(LABELS),
        "--scoring", "softmax", "--scores", str(scores), "--events", str(tmp_path / "ev.jsonl"), state=tmp_path / "s",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in scores.read_text().splitlines()]
    assert len(rows) == 4 and [row["t_s"] for row in rows] == [0.0, 1.0, 2.0, 3.0]
    slices = []
    for row in rows:
        a = int(round(row["t_s"] * 44100))
        p = tmp_path / f"slice{a}.wav"
        sf.write(p, x[a : a + int(window * 44100)], 44100, subtype="FLOAT")
        slices.append(p)
    c = cli(
        "classify", *map(str, slices), "--model", str(out), "--labels", ",".join(LABELS), "--json", state=tmp_path / "s"
    )
    assert c.returncode == 0, c.stderr
    for row, o in zip(rows, json.loads(c.stdout)):
        want = {s["label"]: s["score"] for s in o["scores"]}
        assert max(abs(row["scores"][lab] - want[lab]) for lab in LABELS) < 1e-4


def test_window_reverse_equals_msclaps_for_every_batch():
    """The export's HTSAT window_reverse (batch left to the reshape) equals msclap's own."""
    import torch

    from monitor.models.clap.msclap_export import _msclap_models, window_reverse

    htsat = _msclap_models().htsat
    for b in (1, 2, 3):
        w = torch.randn(b * 16, 8, 8, 5)
        assert torch.equal(window_reverse(w, 8, 32, 32), htsat.msclap_window_reverse(w, 8, 32, 32))


def test_local_pth_and_refusals(exported, tmp_path):
    """`--model PATH.pth`: the version is read off the weights; a checkpoint that is no
    msclap model, one that needs arbitrary unpickling, and an unknown version are one-line
    errors that write nothing."""
    import torch

    from monitor.models.clap.msclap_export import VERSIONS

    version, _out, repos, _r = exported
    weights = repos["microsoft/msclap"] / VERSIONS[version].weights
    cases = {}
    other = tmp_path / "other.pth"
    torch.save({"model": {"encoder.weight": torch.zeros(3)}}, str(other))
    cases[str(other)] = "not an msclap checkpoint"
    pickled = tmp_path / "pickled.pth"
    torch.save({"model": {}, "obj": Path("x")}, str(pickled))  # not a weights-only pickle
    cases[str(pickled)] = "weights-only"
    cases["msclap:2024"] = "msclap:2023, msclap:2022"
    for src, words in cases.items():
        out = tmp_path / "never"
        r = cli("export", "--model", src, "--out", str(out), state=tmp_path / "s", env_extra={"HF_HUB_OFFLINE": "1"})
        assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr, (src, r.stderr[-800:])
        assert not out.exists()
    # the real file from a path, offline: its version is found from its keys, the text
    # model's config and tokenizer come from the local Hugging Face cache the first export filled
    out = tmp_path / "from-pth"
    env = {"HF_HOME": str(_out.parent / "hf-home"), "HF_HUB_OFFLINE": "1"}
    r = cli("export", "--model", str(weights), "--out", str(out), state=tmp_path / "s", env_extra=env, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    m = manifest(out)
    assert m["source"] == str(weights) and m["source_revision"] == "local" and m["name"] == f"msclap-{version}"
    assert m["files"]["audio_encoder.onnx"] == manifest(_out)["files"]["audio_encoder.onnx"]  # the same graph


def test_eval_and_enroll_work_unchanged(exported, demo_dir, tmp_path):
    """eval (the bundled clips, 10 classes) and enroll on an msclap export: the model's own
    window length from its manifest, nothing else to configure."""
    _version, out, _repos, _r = exported
    r = cli("eval", str(demo_dir), "--model", str(out), "--json", state=tmp_path / "s")
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout)
    assert res["n_classes"] == 10 and 0.0 <= res["top1"] <= 1.0 and res["map"] >= 0.1
    rooster = DEMO / "rooster.mp3"
    r = cli("enroll", "our rooster", str(rooster), "--model", str(out), state=tmp_path / "s")
    assert r.returncode == 0, r.stderr[-2000:]
    r = cli(
        "classify", str(rooster), "--model", str(out), "--labels", "our rooster,dog barking,rain", "--json",
        state=tmp_path / "s",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    top = json.loads(r.stdout)[0]["scores"][0]
    assert top["label"] == "our rooster"  # its own clip: the prototype is that clip's embedding
