"""`sound-monitor bench --model DIR [--compare-reference]`: JSON lines of per-window costs.

See monitor.bench for what is measured and how. A randomly initialised full-size export
costs the same as the real one: `make bench` builds one when no model is given.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def add_arguments(p) -> None:
    p.add_argument("--model", required=True, help="an exported CLAP directory (manifest.json)")
    p.add_argument(
        "--compare-reference",
        action="store_true",
        help="also time transformers' pipeline on the same checkpoint (needs the export extra)",
    )
    p.add_argument("--reference", help="the checkpoint for the reference (default: the manifest's source)")
    p.add_argument("--repeats", type=int, default=20, help="timed repetitions per figure (default 20)")
    p.add_argument("--threads", type=int, default=2, help="onnxruntime / torch threads (default 2)")
    p.add_argument("--hop", type=float, default=1.0, help="hop in seconds for the streaming figures (default 1)")
    p.add_argument(
        "--cpu-seconds",
        type=float,
        default=60.0,
        help="seconds of `run` at real-time pace for the CPU share and RSS (default 60; 0 skips it)",
    )
    p.add_argument("--spinning", action="store_true", help="let onnxruntime threads busy-wait in the measured runs")
    p.add_argument(
        "--cost-min",
        type=float,
        default=0.0,
        help="minutes of a home-like stream (room tone, a bundled clip every 12-40 s) through `run --fast` "
        "with the change gate off and on: cpu_s_per_hour_ungated/_gated (default 0: skip)",
    )
    p.add_argument(
        "--soak-min",
        type=float,
        default=0.0,
        help="minutes of audio through `run --fast`, for RSS growth (default 0: skip)",
    )


def run(args) -> int:
    from monitor import bench
    from monitor.config import ModelConfig
    from monitor.errors import UserError
    from monitor.models.select import load_dir

    if args.repeats < 3:
        raise UserError("--repeats must be at least 3")

    def say(msg: str) -> None:
        print(f"[bench] {msg}", file=sys.stderr, flush=True)

    def out(rec: dict) -> dict:
        print(json.dumps(rec), flush=True)
        return rec

    path = Path(args.model).expanduser()
    b32 = load_dir(path, ModelConfig(threads=args.threads, int8=False, spinning=args.spinning))
    from monitor.models.clap.encoder import ClapBackend

    if not isinstance(b32, ClapBackend):
        raise UserError(f"{path} is not a CLAP export: bench measures the CLAP encoder")
    manifest = b32.manifest
    say(f"model {b32.name}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; threads {args.threads}")
    rate, win_s = b32.sample_rate_hz, b32.window_s
    audio = bench.demo_audio(rate)
    n_win = max(args.repeats, 12)
    windows = bench.windows_of(audio, rate, win_s, args.hop, n_win + 2)
    cache = Path(tempfile.mkdtemp(prefix="sound-monitor-bench-"))

    say("machine fp32 matmul rate (onnxruntime) ...")
    gflops = out(bench.figure("matmul_fp32_gflops", "GFLOP/s", bench.matmul_gflops(args.threads), 1))
    counted = bench.graph_gflop(
        path / manifest["audio"]["file"], (1, 1, b32.frontend.n_frames, b32.frontend.params.n_mels), args.threads
    )
    gflop = counted or bench.DEFAULT_ENCODER_GFLOP
    out(
        bench.figure(
            "encoder_gflop_per_window",
            "GFLOP",
            [gflop],
            source="counted from the encoder's matmul/conv shapes" if counted else "published figure",
        )
    )
    floor_ms = gflop / gflops["median"] * 1000.0
    out(bench.figure("encoder_floor_ms", "ms", [floor_ms], 2))
    # one core's rate bounds the CPU share; the int8 product's rate bounds the int8 encoder
    gflops1 = out(bench.figure("matmul_fp32_gflops_1thread", "GFLOP/s", bench.matmul_gflops(1), 1))
    floor8_ms = None
    if manifest["audio"].get("int8_file"):
        gops8 = out(
            bench.figure(
                "matmul_int8_gops",
                "GOP/s",
                bench.matmul_gflops(args.threads, int8=True),
                1,
                method="dynamic quantisation, as export --int8",
            )
        )
        floor8_ms = gflop / gops8["median"] * 1000.0
        out(bench.figure("encoder_int8_floor_ms", "ms", [floor8_ms], 2))

    say("front-end ...")
    out(
        bench.figure(
            "frontend_full_window_ms",
            "ms",
            bench.time_ms(lambda: b32.frontend.batch_features(windows[0].samples[None]), args.repeats),
        )
    )
    out(bench.figure("frontend_ms_per_hop", "ms", bench.frontend_per_hop(b32, windows), hop_s=args.hop))

    feats = b32.frontend.batch_features(windows[0].samples[None])
    say("encoder fp32 ...")
    enc32 = out(
        bench.figure("encoder_fp32_ms_per_window", "ms", bench.time_ms(lambda: b32.embed_features(feats), args.repeats))
    )
    feats4 = np.concatenate([feats] * 4)  # four pending windows (catching up after a stall)
    rss_single = bench.rss_mb()
    out(
        bench.figure(
            "encoder_fp32_ms_per_window_batch4",
            "ms",
            [t / 4 for t in bench.time_ms(lambda: b32.embed_features(feats4), max(3, args.repeats // 4))],
        )
    )
    b32.embed_features(feats)  # back to the steady state: what does the catch-up leave behind?
    out(bench.figure("encoder_rss_kept_after_batch4_mb", "MB", [bench.rss_mb() - rss_single], 1))
    scorer = bench.make_scorer(b32, bench.LABELS, cache)
    emb = b32.embed_features(feats)
    out(
        bench.figure(
            "scoring_ms_per_window",
            "ms",
            bench.time_ms(lambda: scorer.score(emb), args.repeats),
            4,
            labels=len(bench.LABELS),
            scoring="vs-background",
        )
    )
    # vetoes: one more vector each (3 text vetoes per label here, shared by all labels):
    # scoring only, never a model run
    vetoed = bench.make_scorer(b32, bench.LABELS, cache, vetoes=bench.VETOES)
    out(
        bench.figure(
            "scoring_with_vetoes_ms_per_window",
            "ms",
            bench.time_ms(lambda: vetoed.score_window(emb[0]), args.repeats),
            4,
            labels=len(bench.LABELS),
            vetoes_per_label=len(bench.VETOES),
            scoring="vs-background",
        )
    )
    out(
        bench.figure(
            "scoring_without_vetoes_ms_per_window",
            "ms",
            bench.time_ms(lambda: scorer.score_window(emb[0]), args.repeats),
            4,
        )
    )
    tot32 = out(bench.figure("total_fp32_ms_per_window", "ms", bench.per_window_total(b32, scorer, windows[1:])))
    say("two sources sharing the encoder ...")
    out(
        bench.figure(
            "total_fp32_ms_per_window_2_sources", "ms", bench.per_window_total(b32, scorer, windows[1:], 2), sources=2
        )
    )
    out(
        bench.figure(
            "encoder_fp32_ratio_to_floor", "x", [v / floor_ms for v in [enc32["median"], enc32["min"], enc32["max"]]]
        )
    )
    out(
        bench.figure(
            "total_fp32_ratio_to_floor", "x", [v / floor_ms for v in [tot32["median"], tot32["min"], tot32["max"]]]
        )
    )

    tot8 = None
    if manifest["audio"].get("int8_file"):
        b8 = load_dir(path, ModelConfig(threads=args.threads, int8=True, spinning=args.spinning))
        assert isinstance(b8, ClapBackend)
        say("encoder int8 ...")
        out(
            bench.figure(
                "encoder_int8_ms_per_window", "ms", bench.time_ms(lambda: b8.embed_features(feats), args.repeats)
            )
        )
        scorer8 = bench.make_scorer(b8, bench.LABELS, cache)
        b8.embed_windows(windows[:2], stream="total")
        tot8 = out(bench.figure("total_int8_ms_per_window", "ms", bench.per_window_total(b8, scorer8, windows[1:])))
        say("int8 agreement on the bundled clips ...")
        ag = bench.int8_agreement(b32, b8, bench.LABELS)
        out(bench.figure("int8_cosine_vs_fp32", "cosine", ag["cosine"], 5))
        out(bench.figure("int8_max_score_diff_vs_fp32", "softmax score", ag["score_diff"], 5, labels=len(bench.LABELS)))
        share = float(sum(ag["top1_same"]) / len(ag["top1_same"]))
        out(bench.figure("int8_top1_agreement", "share", [share], n=len(ag["top1_same"])))
        del b8, scorer8
    else:
        say("no int8 encoder in this export (export --int8): int8 figures skipped")

    ncpu = os.cpu_count() or 1
    runs = cache / "runs"
    runs.mkdir()
    env = dict(os.environ, SOUND_MONITOR_STATE=str(runs / "state"))
    cfg = runs / "config.yaml"
    # the runs measure the fp32 encoder, as the fp32 figures do (model.int8: auto would choose)
    cfg.write_text(f"model:\n  threads: {args.threads}\n  spinning: {str(args.spinning).lower()}\n  int8: false\n")
    common = [
        "--config",
        str(cfg),
        "--model",
        str(path),
        "--no-tui",
        "--labels",
        ",".join(bench.LABELS),
        "--hop",
        str(args.hop),
        "--events",
        str(runs / "events.jsonl"),
    ]
    if args.cpu_seconds > 0:
        say("`run` on 6 s of audio to fill the label cache, as any second start finds it ...")
        bench.run_child(
            ["--source", str(bench.write_loop_wav(runs / "warm.wav", audio, rate, 6.0)), "--fast", *common],
            env,
            1.0,
            say,
        )
        warmup_s = min(15.0, args.cpu_seconds)
        say(f"`run` at real-time pace for {args.cpu_seconds:.0f} s (+{warmup_s:.0f} s warm-up), hop {args.hop} s ...")
        wav = bench.write_loop_wav(runs / "cpu.wav", audio, rate, args.cpu_seconds + warmup_s)
        res = bench.run_child(["--source", str(wav), *common], env, min(5.0, args.cpu_seconds / 4), say)
        s = [x for x in res["samples"] if x[0] - res["samples"][0][0] >= warmup_s]
        shares = [100.0 * (b[1] - a[1]) / (b[0] - a[0]) / ncpu for a, b in zip(s, s[1:]) if b[0] > a[0]]
        dropped = bench.dropped_windows(res["stderr"])
        if shares:
            out(
                bench.figure(
                    "cpu_share_hop_pct",
                    "% of machine",
                    shares,
                    2,
                    hop_s=args.hop,
                    cpus=ncpu,
                    spinning=args.spinning,
                    dropped_windows=dropped,
                )
            )
            out(
                bench.figure(
                    "cpu_share_floor_pct",
                    "% of machine",
                    [bench.cpu_share_floor_pct(gflop, gflops1["median"], args.hop, ncpu)],
                    2,
                    hop_s=args.hop,
                )
            )
            out(bench.figure("run_rss_mb", "MB", [x[2] for x in s], 1))
            out(bench.figure("run_peak_rss_mb", "MB", [res["samples"][-1][3]], 1))
    if args.soak_min > 0:
        say(f"soak: `run --fast` on {args.soak_min:.0f} min of audio ...")
        wav = bench.write_loop_wav(runs / "soak.wav", audio, rate, args.soak_min * 60.0)
        t0 = time.monotonic()
        res = bench.run_child(["--source", str(wav), "--fast", *common], env, 2.0, say)
        s = res["samples"]
        start = s[0][0] + max(10.0, 0.1 * (s[-1][0] - s[0][0]))  # past start-up (model load, label cache)
        warm = [x for x in s if x[0] >= start] or s[-1:]
        growth = warm[-1][2] - warm[0][2]
        out(
            bench.figure(
                "soak_rss_mb",
                "MB",
                [x[2] for x in warm],
                1,
                minutes=args.soak_min,
                wall_s=round(time.monotonic() - t0, 1),
                first=round(warm[0][2], 1),
                last=round(warm[-1][2], 1),
                dropped_windows=bench.dropped_windows(res["stderr"]),
            )
        )
        out(bench.figure("soak_rss_growth_mb", "MB", [growth], 1))
    if args.cost_min > 0:
        _cost_per_hour(args, bench, runs, rate, env, common, out, say)
    shutil.rmtree(cache, ignore_errors=True)  # label cache, wav files, the runs' state
    out(bench.figure("bench_process_peak_rss_mb", "MB", [bench.peak_rss_mb()], 1))

    if args.compare_reference:
        src = str(args.reference or manifest.get("source") or "")
        say(f"reference: transformers pipeline on {src} ...")
        ref = out(
            bench.figure(
                "reference_pipeline_ms_per_window",
                "ms",
                bench.reference_ms(src, windows, bench.LABELS, args.repeats, args.threads),
                labels=len(bench.LABELS),
            )
        )
        # what an encoder running at the measured matmul rate with no other cost would reach
        out(bench.figure("speedup_bound_fp32", "x", [ref["median"] / floor_ms], 2))
        if floor8_ms:
            out(bench.figure("speedup_bound_int8", "x", [ref["median"] / floor8_ms], 2))
        if tot8:
            out({"metric": "speedup_int8_vs_reference", "value": round(ref["median"] / tot8["median"], 2)})
        out({"metric": "speedup_vs_reference", "value": round(ref["median"] / tot32["median"], 2)})
    say(f"done; load average {os.getloadavg()[0]:.2f}")
    return 0


def _cost_per_hour(args, bench, runs, rate, env, common, out, say) -> None:
    """CPU seconds per hour of audio of `run --fast` on a home-like stream, gate off and on."""
    import resource

    from monitor.audio_io import read_audio

    clips = [read_audio(p, rate).samples for p in sorted(bench.DEMO_DIR.glob("*.mp3"))]
    wav = runs / "home.wav"
    n = bench.write_home_stream(wav, clips, rate, args.cost_min * 60.0)
    say(f"cost: `run --fast` on {args.cost_min:.0f} min of room tone with {n} clips, change gate off and on ...")
    base = (runs / "config.yaml").read_text()
    paths = {}
    for name, on in (("ungated", "false"), ("gated", "true")):  # explicit: the gate's default may change
        paths[name] = runs / f"{name}.yaml"
        paths[name].write_text(base + f"stream:\n  change_gate: {on}\n")
    hours = args.cost_min / 60.0
    for name, cfg_path in paths.items():
        argv = ["--source", str(wav), "--fast", *common]
        argv[argv.index("--config") + 1] = str(cfg_path)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.monotonic()
        res = bench.run_child(argv, env, 5.0, say)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        m = re.search(r"(\d+) reused by the change gate", res["stderr"])
        out(
            bench.figure(
                f"cpu_s_per_hour_{name}",
                "CPU s per hour of audio",
                [cpu / hours],
                1,
                minutes=args.cost_min,
                clips=n,
                wall_s=round(time.monotonic() - t0, 1),
                reused_windows=int(m.group(1)) if m else 0,
            )
        )
