"""`sound-monitor bench`: what one window costs on this machine, against its floor and the
reference pipeline.

Every figure is one JSON line ``{"metric", "unit", "median", "min", "max", "n"}`` on
stdout (progress goes to stderr). The audio is the bundled demo recording played as a
stream, so the windows are real sounds, 5 s every hop. Measured, in this order:

- the machine's fp32 matmul rate through onnxruntime (the engine the encoder runs on) and
  the encoder's cost in GFLOP per window (counted from the shapes its matmuls and
  convolutions run with): their ratio is the encoder's floor in ms; the same product on
  one core (whose rate bounds the CPU share any implementation can reach) and dynamically
  quantised to int8 (whose rate bounds the int8 encoder);
- front-end ms for a whole window and per hop (the incremental front-end), encoder ms per
  window (fp32, int8 when exported), scoring ms, and the total per window as the monitor
  runs it (front-end + encoder + scoring on consecutive windows), with ratios to the floor;
- int8 agreement with fp32 on the bundled clips (cosine, score difference, top-1);
- CPU share of the whole machine and RSS of ``sound-monitor run`` as its own process (label
  cache warm, as on any start after the first) on a file at real-time pace, hop 1 s;
  optionally a soak (``--soak-min``): ``run --fast`` on that many minutes, for RSS growth;
- with ``--compare-reference``: transformers' zero-shot-audio-classification pipeline on the
  same checkpoint, same windows, 10 labels, in this run; the speed-up bounds (reference over
  the floors: what an encoder with no cost beyond its matmuls would reach); the last line
  is the speed-up.

The bench process's own peak RSS is taken before the reference is loaded (torch would
dominate it).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from monitor.errors import UserError
from monitor.machine import DEMO_DIR, cpu_info  # noqa: F401 - cpu_info re-exported for the benchmark scripts
from monitor.models.clap.graph import RESIZE_MATMUL_PREFIX

LABELS = ("dog", "cat", "cow", "duck", "frog", "horse", "owl", "pig", "rooster", "sheep")
VETOES = ("speech", "television", "music")  # scoring.veto: every label's

DEFAULT_ENCODER_GFLOP = 11.8  # laion/clap-htsat-unfused audio encoder, when the graph cannot be counted


# -- output ------------------------------------------------------------------------------------
def figure(metric: str, unit: str, values: Sequence[float], digits: int = 3, **extra) -> dict:
    v = np.asarray(list(values), dtype=np.float64)
    rec = {
        "metric": metric,
        "unit": unit,
        "median": round(float(np.median(v)), digits),
        "min": round(float(v.min()), digits),
        "max": round(float(v.max()), digits),
        "n": int(v.size),
    }
    rec.update(extra)
    return rec


def time_ms(fn: Callable[[], object], repeats: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000.0)
    return out


def rss_mb() -> float:
    """This process's resident memory, MB (NaN where /proc is missing)."""
    try:
        return _proc_mem_mb("self")[0]
    except OSError:
        return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


# -- the machine and the model's floor ----------------------------------------------------------
def matmul_gflops(
    threads: int, repeats: int = 10, m: int = 2048, k: int = 1024, n: int = 1024, int8: bool = False
) -> list[float]:
    """MatMul rate of onnxruntime (MLAS) with ``threads`` intra-op threads, GFLOP/s (one
    multiply-add = 2 operations). ``int8``: the same product dynamically quantised exactly as
    ``export --int8`` quantises the encoder (int8 weights, activations quantised per call),
    which is what bounds the int8 encoder."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from monitor.models.ort import session

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((k, n)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if int8:
        from monitor.models.clap.graph import quantise_dynamic_int8

        with tempfile.TemporaryDirectory() as tmp:
            src, dst = Path(tmp) / "mm.onnx", Path(tmp) / "mm8.onnx"
            onnx.save(model, str(src))
            quantise_dynamic_int8(src, dst)
            model = onnx.load(str(dst))
    sess = session(model.SerializeToString(), threads)
    x = np.random.default_rng(1).standard_normal((m, k)).astype(np.float32)
    ms = time_ms(lambda: sess.run(None, {"x": x}), repeats, warmup=3)
    return [2.0 * m * k * n / (t / 1000.0) / 1e9 for t in ms]


def cpu_share_floor_pct(gflop: float, gflops_one_thread: float, hop_s: float, ncpu: int) -> float:
    """The least CPU share of the whole machine an encoder of ``gflop`` per window can use at
    one window per ``hop_s``: its work at one core's matmul rate (parallel threads add
    synchronisation, never remove work), spread over ``ncpu`` cores."""
    return 100.0 * (gflop / gflops_one_thread) / hop_s / ncpu


def graph_gflop(onnx_path: Path, input_shape: Sequence[int], threads: int = 2) -> float | None:
    """Multiply-add work of one batch-1 inference, in GFLOP: MatMul/Gemm/Conv nodes, with
    the shapes they actually ran with (onnxruntime's profiler, basic optimisation level).

    ``input_shape`` is the encoder input for one window; random input of that shape is run.
    """
    from monitor.models.ort import session

    try:
        with tempfile.TemporaryDirectory() as tmp:
            sess = session(onnx_path, threads, level="basic", profile_prefix=Path(tmp) / "flop")
            inp = sess.get_inputs()[0]
            x = np.random.default_rng(0).standard_normal(tuple(input_shape)).astype(np.float32)
            sess.run(None, {inp.name: x})
            events = json.loads(Path(sess.end_profiling()).read_text())
    except Exception:  # noqa: BLE001 - a figure we can do without
        return None
    flop = 0.0
    for e in events:
        args = e.get("args") or {}
        op = args.get("op_name")
        if e.get("cat") != "Node" or op not in ("MatMul", "FusedMatMul", "Gemm", "Conv"):
            continue
        if e.get("name", "").startswith(RESIZE_MATMUL_PREFIX):
            continue  # the export's rewrite of the model's interpolation: not the model's own work
        ins = [next(iter(t.values())) for t in args.get("input_type_shape", [])]
        outs = [next(iter(t.values())) for t in args.get("output_type_shape", [])]
        if op in ("MatMul", "FusedMatMul") and ins and outs:
            # constant weights are not listed among the inputs: 2 * |output| * k
            flop += 2.0 * float(np.prod(outs[0])) * ins[0][-1]
        elif op == "Gemm" and len(ins) >= 2 and outs:
            flop += 2.0 * float(np.prod(outs[0])) * float(np.prod(ins[0])) / max(outs[0][0], 1)  # 2*m*n*k
        elif op == "Conv" and len(ins) >= 2 and outs:
            flop += 2.0 * float(np.prod(outs[0])) * float(np.prod(ins[1][1:]))
    return flop / 1e9 if flop > 0 else None


# -- audio ---------------------------------------------------------------------------------------
def demo_audio(rate: int) -> np.ndarray:
    from monitor.audio_io import read_audio

    parts = []
    for p in sorted(DEMO_DIR.glob("*.mp3")):
        parts.append(read_audio(p, rate).samples)
        parts.append(np.zeros(rate // 2, dtype=np.float32))
    return np.concatenate(parts)


def windows_of(audio: np.ndarray, rate: int, window_s: float, hop_s: float, count: int):
    from monitor.stream.windows import Windower

    w = Windower(rate, window_s, hop_s)
    need = int((window_s + hop_s * (count - 1)) * rate) + 1
    reps = -(-need // audio.size)
    return w.push(np.tile(audio, reps)[:need])[:count]


# -- the pieces ----------------------------------------------------------------------------------
def make_scorer(backend, labels: Sequence[str], cache_dir, vetoes: Sequence[str] = ()):
    from monitor.config import Config, LabelConfig, ScoringConfig
    from monitor.models.vetoes import vetoes_for
    from monitor.scoring import Scorer

    scoring = ScoringConfig(veto=tuple(vetoes) or None)
    cfg = Config(labels=[LabelConfig(name=l) for l in labels], scoring=scoring)
    return Scorer(backend, cfg.labels, scoring, cache_dir=cache_dir, vetoes=vetoes_for(cfg))


def per_window_total(backend, scorer, windows, n_sources: int = 1) -> list[float]:
    """ms per window as the pipeline spends it: incremental front-end + encoder stage +
    scoring. With ``n_sources`` > 1, that many sources' windows complete together (as
    microphones started at once do) and share the encoder stage, as in ``run`` with several
    sources: each value is a round's wall time divided by ``n_sources``. The first window
    of ``windows`` warms the streams' front-ends and is not timed."""
    from concurrent.futures import ThreadPoolExecutor

    from monitor.stream.shared_encoder import SharedEncoder

    enc = SharedEncoder(backend, linger_s=0.05 if n_sources > 1 else 0.0)
    names = [f"bench{i}" for i in range(n_sources)]
    for name in names:
        enc.register(name)
    out = []
    with ThreadPoolExecutor(n_sources) as pool:
        for k, w in enumerate(windows):
            t = time.perf_counter()
            list(pool.map(lambda name, w=w: scorer.score(enc.embed([w], name)), names))
            if k:
                out.append((time.perf_counter() - t) * 1000.0 / n_sources)
    enc.close()
    return out


def frontend_per_hop(backend, windows) -> list[float]:
    from monitor.models.clap.frontend import StreamingFrontend

    sf = StreamingFrontend(backend.frontend)
    sf.window_features(windows[0].samples, round(windows[0].start_s * windows[0].sample_rate_hz))
    out = []
    for w in windows[1:]:
        t = time.perf_counter()
        sf.window_features(w.samples, round(w.start_s * w.sample_rate_hz))
        out.append((time.perf_counter() - t) * 1000.0)
    return out


def int8_agreement(b32, b8, labels: Sequence[str]) -> dict:
    """fp32 vs int8 on the bundled clips: embedding cosine, softmax score gap, top-1 agreement."""
    from monitor.audio_io import read_audio
    from monitor.models.labels import label_embeddings, softmax_scores

    clips = [read_audio(p, b32.sample_rate_hz).samples for p in sorted(DEMO_DIR.glob("*.mp3"))]
    lab = label_embeddings(b32, list(labels))
    cos, diff, same = [], [], []
    for c in clips:
        e32, e8 = b32.embed_clip(c), b8.embed_clip(c)
        cos.append(float(e32 @ e8))
        s32 = softmax_scores(e32[None], lab, b32.logit_scale)[0]
        s8 = softmax_scores(e8[None], lab, b8.logit_scale)[0]
        diff.append(float(np.abs(s32 - s8).max()))
        same.append(float(np.argmax(s32) == np.argmax(s8)))
    return {"cosine": cos, "score_diff": diff, "top1_same": same}


def write_loop_wav(path: Path, audio: np.ndarray, rate: int, seconds: float) -> Path:
    """The demo recording looped to ``seconds``, as 16-bit WAV, written block by block."""
    import soundfile as sf

    total, n = int(seconds * rate), audio.size
    with sf.SoundFile(str(path), "w", rate, 1, subtype="PCM_16") as f:
        done = 0
        while done < total:
            part = audio[: min(n, total - done)]
            f.write(part)
            done += part.size
    return path


def room_tone(seconds: float, rate: int, rng: np.random.Generator) -> np.ndarray:
    """Quiet, real-looking background: 1/f noise around -58 dBFS, mains hum (50 Hz and two
    harmonics) around -60 dBFS, a slow level drift."""
    n = int(seconds * rate)
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / rate)
    spec[1:] /= np.sqrt(f[1:] / 20.0)
    spec[0] = 0
    pink = np.fft.irfft(spec, n)
    pink *= 10 ** (-58 / 20) / np.sqrt(np.mean(pink**2))
    t = np.arange(n) / rate
    hum = sum(a * np.sin(2 * np.pi * 50 * k * t + rng.uniform(0, 6.3)) for k, a in ((1, 1.0), (2, 0.4), (3, 0.25)))
    hum *= 10 ** (-60 / 20) / np.sqrt(np.mean(hum**2))
    drift = 1.0 + 0.3 * np.sin(2 * np.pi * t / rng.uniform(40, 90))
    return ((pink + hum) * drift).astype(np.float32)


def quiet_lead(x: np.ndarray, rate: int, below_dbfs: float = -50.0) -> np.ndarray:
    """A recording's quiet lead-in: its 0.1 s frames before the first one above ``below_dbfs``
    (real room tone, recorded with the sound that follows)."""
    from monitor.models.level import rms_dbfs

    f = rate // 10
    frames = x[: len(x) // f * f].reshape(-1, f)
    loud = np.nonzero(rms_dbfs(frames) > below_dbfs)[0]
    return frames[: loud[0] if len(loud) else len(frames)].reshape(-1)


def write_home_stream(path: Path, clips: Sequence[np.ndarray], rate: int, seconds: float, seed: int = 0) -> int:
    """A home-like stream as 16-bit WAV, written segment by segment (memory stays small):
    room tone with one of ``clips`` mixed in every 12-40 s. Returns how many clips went in."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    total, done, n_clips = int(seconds * rate), 0, 0
    with sf.SoundFile(str(path), "w", rate, 1, subtype="PCM_16") as f:
        while done < total:
            seg = room_tone(float(rng.uniform(12, 40)), rate, rng)
            clip = clips[int(rng.integers(len(clips)))] if clips else np.zeros(0, np.float32)
            at = len(seg) - len(clip) - rate if len(seg) > len(clip) + rate else -1
            if at >= 0 and done + len(seg) <= total:
                seg[at : at + len(clip)] += clip
                n_clips += 1
            part = seg[: total - done]
            f.write(np.clip(part, -1.0, 1.0))
            done += part.size
    return n_clips


def _proc_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _proc_mem_mb(pid: int | str) -> tuple[float, float]:
    """(RSS, peak RSS) in MB of a process id or "self", from /proc."""
    rss = hwm = float("nan")
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024.0
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) / 1024.0
    return rss, hwm


def run_child(args: Sequence[str], env: dict, sample_every_s: float, say) -> dict:
    """Run ``sound-monitor run ...`` as its own process (exactly what a user runs) and sample
    its CPU time and memory from /proc until it exits. Returns samples and the exit code."""
    import subprocess

    cmd = [sys.executable, "-m", "monitor", "run", *args]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    samples: list[tuple[float, float, float, float]] = []  # (t, cpu_s, rss_mb, peak_mb)
    while True:
        try:
            t = time.monotonic()
            cpu = _proc_cpu_s(proc.pid)
            rss, hwm = _proc_mem_mb(proc.pid)
            samples.append((t, cpu, rss, hwm))
        except (OSError, IndexError, ValueError):
            pass
        try:
            proc.wait(timeout=sample_every_s)
            break
        except subprocess.TimeoutExpired:
            continue
    err = proc.stderr.read() if proc.stderr else ""
    if proc.returncode != 0:
        raise UserError(f"the measured run failed (exit {proc.returncode}): {err.strip().splitlines()[-1:] or ''}")
    return {"samples": samples, "stderr": err}


def dropped_windows(stderr: str) -> int | None:
    import re

    m = re.search(r"(\d+) windows dropped", stderr)
    return int(m.group(1)) if m else None


def reference_ms(src: str, windows, labels: Sequence[str], repeats: int, threads: int) -> list[float]:
    try:
        import torch
        from transformers import pipeline
    except ImportError as e:
        raise UserError(f"--compare-reference needs torch and transformers ({e}): pip install -e '.[export]'") from None
    torch.set_num_threads(threads)
    try:
        pipe = pipeline("zero-shot-audio-classification", model=src)
    except Exception as e:  # noqa: BLE001 - hub errors come in many types
        raise UserError(
            f"cannot load the reference pipeline from {src}: {str(e).splitlines()[0][:200]} "
            "(pass --reference DIR with the checkpoint in Hugging Face format)"
        ) from None
    clips = [w.samples for w in windows]
    i = iter(range(1 << 30))
    with torch.inference_mode():
        return time_ms(lambda: pipe(clips[next(i) % len(clips)], candidate_labels=list(labels)), repeats)
