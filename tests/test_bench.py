"""`sound-monitor bench`: the JSON-lines contract, the figures it derives, the reference run.

Timing values are not asserted (benchmarks, not timed tests); their presence, units,
consistency and the parts that are exact (FLOP count, int8 agreement) are.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import cli

from monitor import bench

ROOT = Path(__file__).resolve().parents[1]


def _bench(*args, timeout=600):
    r = cli("bench", *args, state=Path(tempfile.mkdtemp(prefix="bench-state-")), timeout=timeout)
    return r.returncode, [json.loads(l) for l in r.stdout.splitlines() if l.strip()], r.stderr


def test_matmul_flop_count_of_a_known_graph(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w1 = numpy_helper.from_array(np.ones((64, 32), np.float32), "w1")
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 10, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [w1],
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    assert bench.graph_gflop(path, (1, 10, 64)) == pytest.approx(2 * 10 * 64 * 32 / 1e9)


@pytest.mark.slow  # about 10-30 s: a whole model or a real device
def test_bench_json_lines_on_an_export(tiny_clap_export, tiny_clap_dir):
    code, lines, err = _bench(
        "--model",
        str(tiny_clap_export),
        "--repeats",
        "3",
        "--cpu-seconds",
        "4",
        "--compare-reference",
        "--reference",
        str(tiny_clap_dir),
        "--cost-min",
        "2",
    )
    assert code == 0, err
    figures = {l["metric"]: l for l in lines if "median" in l}
    for name in (
        "matmul_fp32_gflops",
        "encoder_gflop_per_window",
        "encoder_floor_ms",
        "frontend_full_window_ms",
        "frontend_ms_per_hop",
        "encoder_fp32_ms_per_window",
        "scoring_ms_per_window",
        "scoring_with_vetoes_ms_per_window",
        "scoring_without_vetoes_ms_per_window",
        "total_fp32_ms_per_window",
        "total_fp32_ms_per_window_2_sources",
        "encoder_fp32_ms_per_window_batch4",
        "total_fp32_ratio_to_floor",
        "cpu_share_hop_pct",
        "run_rss_mb",
        "bench_process_peak_rss_mb",
        "reference_pipeline_ms_per_window",
        "matmul_fp32_gflops_1thread",
        "cpu_share_floor_pct",
    ):
        rec = figures[name]
        assert set(rec) >= {"metric", "unit", "median", "min", "max"}, rec
        assert rec["min"] <= rec["median"] <= rec["max"], rec
        assert rec["median"] > 0, rec
    # vetoes are scoring work, not model runs: well under the encoder's time per window
    assert figures["scoring_with_vetoes_ms_per_window"]["vetoes_per_label"] == 3
    assert figures["scoring_with_vetoes_ms_per_window"]["median"] < figures["encoder_fp32_ms_per_window"]["median"]
    # the floor is the counted work over the measured rate
    floor = figures["encoder_gflop_per_window"]["median"] / figures["matmul_fp32_gflops"]["median"] * 1000
    assert figures["encoder_floor_ms"]["median"] == pytest.approx(floor, rel=0.01, abs=0.01)
    assert figures["cpu_share_hop_pct"]["dropped_windows"] == 0
    # the CPU floor: the counted work at one core's rate, once per 1 s hop, over the machine's cores
    share_floor = (
        figures["encoder_gflop_per_window"]["median"]
        / figures["matmul_fp32_gflops_1thread"]["median"]
        / 1.0
        / (os.cpu_count() or 1)
        * 100
    )
    assert figures["cpu_share_floor_pct"]["median"] == pytest.approx(share_floor, rel=0.01, abs=0.01)
    ref_ms = figures["reference_pipeline_ms_per_window"]["median"]
    gflop = figures["encoder_gflop_per_window"]["median"]  # (figures are rounded: compare within 5 %)
    assert figures["speedup_bound_fp32"]["median"] == pytest.approx(
        ref_ms / (gflop / figures["matmul_fp32_gflops"]["median"] * 1000), rel=0.05
    )
    # CPU per hour of a home-like stream, change gate off and on (the same stream)
    ungated, gated = figures["cpu_s_per_hour_ungated"], figures["cpu_s_per_hour_gated"]
    assert ungated["unit"] == gated["unit"] == "CPU s per hour of audio" and ungated["clips"] >= 3
    assert ungated["reused_windows"] == 0 and gated["reused_windows"] > 0
    last = lines[-1]
    assert last["metric"] == "speedup_vs_reference"
    ref, ours = figures["reference_pipeline_ms_per_window"]["median"], figures["total_fp32_ms_per_window"]["median"]
    assert last["value"] == pytest.approx(ref / ours, rel=0.01)
    if "int8_top1_agreement" in figures:  # the tiny export is made with --int8
        assert 0.0 <= figures["int8_top1_agreement"]["median"] <= 1.0
        assert figures["int8_cosine_vs_fp32"]["min"] > 0.9
        int8_floor = figures["encoder_gflop_per_window"]["median"] / figures["matmul_int8_gops"]["median"] * 1000
        assert figures["encoder_int8_floor_ms"]["median"] == pytest.approx(int8_floor, rel=0.01, abs=0.01)
        assert figures["speedup_bound_int8"]["median"] == pytest.approx(ref_ms / int8_floor, rel=0.05)


def test_bench_errors_are_one_line(tmp_path):
    code, lines, err = _bench("--model", str(tmp_path / "nope"))
    assert code == 2 and lines == [] and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
