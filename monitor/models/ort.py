"""The one place onnxruntime sessions are made (CPU), with the project's settings.

- ``intra_op`` threads as configured, one inter-op thread, sequential execution;
- no busy-waiting worker threads between runs unless ``spinning`` (a few % latency for a
  core's worth of CPU around every window, which an always-on monitor should not pay);
- denormals flushed to zero (CLAP's shifted-window attention masks with -100: exp() of that
  underflows to denormal floats, which x86 multiplies ~10x slower; flushing changed no
  output bit on our checks and made the encoder ~20 % (fp32) to ~30 % (int8) faster);
- ``level``: onnxruntime's graph optimisation (all | extended | basic | none);
- ``save_to``: write the optimised graph there (offline graph preparation).

onnxruntime is imported here only; a missing or broken install is a ModelError.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from monitor.errors import ModelError

LEVELS = ("all", "extended", "basic", "none")


def import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError as e:
        raise ModelError("onnxruntime is not installed: pip install onnxruntime") from e
    return onnxruntime


def session(
    model: str | Path | bytes,
    threads: int = 2,
    *,
    spinning: bool = False,
    level: str = "all",
    denormal_zero: bool = True,
    save_to: str | Path | None = None,
    profile_prefix: str | Path | None = None,
) -> Any:
    """An onnxruntime CPU InferenceSession of ``model`` (a path or the serialised bytes)."""
    ort = import_ort()
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    so.graph_optimization_level = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }[level]
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if denormal_zero:
        so.add_session_config_entry("session.set_denormal_as_zero", "1")
    if save_to is not None:
        so.optimized_model_filepath = str(save_to)
    if profile_prefix is not None:
        so.enable_profiling = True
        so.profile_file_prefix = str(profile_prefix)
    src = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def run_options_shrink() -> Any:
    """RunOptions that give the CPU arena's unused memory back after a run."""
    ro = import_ort().RunOptions()
    ro.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return ro
