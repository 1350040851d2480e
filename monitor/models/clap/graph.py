"""Graph work on CLAP audio encoders, shared by ``export`` (torch) and ``models fetch clap``
(no torch): onnx + onnxruntime + numpy only, imported inside the functions.

- ``resize_as_matmul``: HTSAT's bicubic time-axis Resize as a constant MatMul (~9 ms less
  per window on the full-size encoder);
- ``save_optimised``: onnxruntime's EXTENDED-level optimised graph saved next to the
  original and checked against it;
- ``quantise_dynamic_int8``: the one int8 quantisation of the project (``export --int8``,
  ``bench``);
- ``check_model``: ``onnx.checker`` as a one-line ``ModelError``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from monitor.errors import ModelError

RESIZE_MATMUL_PREFIX = "sound_monitor_resize_as_matmul"


def ort_session(path: Path | bytes, threads: int = 2, level: str = "all") -> Any:
    """A plain onnxruntime CPU session for checks (monitor.models.ort's settings)."""
    from monitor.models.ort import session

    return session(path, threads, level=level)


def embeddings(session: Any, feats: np.ndarray, input_name: str, output_name: str) -> np.ndarray:
    """L2-normalised output ``output_name`` for ``feats`` (compare graphs as the runtime uses them)."""
    e = session.run([output_name], {input_name: feats})[0].astype(np.float64)
    return e / np.maximum(np.linalg.norm(e, axis=-1, keepdims=True), 1e-12)


def save_optimised(
    src: Path,
    dst: Path,
    feats: np.ndarray,
    expected: np.ndarray,
    threads: int,
    say: Callable[[str], None],
    input_name: str = "input_features",
    output_name: str | None = None,
    tol: float = 1e-4,
) -> float | None:
    """Save onnxruntime's optimised form of an audio encoder as ``dst``.

    Level EXTENDED: its fusions are portable across CPUs (ENABLE_ALL's layout changes are
    not, so they stay a load-time step). The saved graph must give the same embeddings as
    ``expected`` (L2-normalised when ``output_name`` is given, else raw first output) within
    ``tol``; returns the difference, or None (and no ``dst``) when it does not.
    """
    from monitor.models.ort import session

    session(src, threads, level="extended", denormal_zero=False, save_to=dst)
    s = ort_session(dst, threads)
    if output_name is None:
        got = s.run(None, {input_name: feats})[0]
    else:
        got = embeddings(s, feats, input_name, output_name)
    diff = float(np.abs(got - expected).max())
    if not diff <= tol:
        say(f"optimised graph {dst.name} differs by {diff:.2e} (> {tol:.0e}): not used")
        dst.unlink(missing_ok=True)
        return None
    return diff


def resize_as_matmul(path: Path, feats: np.ndarray, threads: int, dst: Path | None = None) -> list[str]:
    """Rewrite Resize nodes that only stretch the time axis as a MatMul by a constant matrix.

    HTSAT stretches the 1001 mel frames to 1024 with a bicubic Resize, which onnxruntime
    runs in ~10 ms (8 % of the encoder); the same linear map as a [1024, 1001] MatMul costs
    under 1 ms. The matrix is read off onnxruntime's own Resize (applied to an identity),
    so the rewrite is the same map; callers compare the rewritten graph with the original.
    Works whether the Resize is given ``sizes`` or ``scales`` (the shapes it really sees are
    measured by running the graph once). Writes to ``dst`` (default: in place) only when
    something was rewritten. Returns the names of the new MatMul nodes (kept in fp32 by the
    int8 quantiser).
    """
    import onnx
    from onnx import helper, numpy_helper

    from monitor.models.ort import session

    model = onnx.load(str(path))
    g = model.graph
    resizes = [n for n in g.node if n.op_type == "Resize"]
    if not resizes:
        return []
    # the shapes each Resize actually sees: expose its input/output and run the graph once
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    names = [t for n in resizes for t in (n.input[0], n.output[0])]
    probe.graph.output.extend([onnx.ValueInfoProto(name=t) for t in names])
    inputs = [i.name for i in g.input if i.name not in {x.name for x in g.initializer}]
    sess = ort_session(probe.SerializeToString(), threads, level="none")
    values = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {inputs[0]: feats[:1]})))
    done = []
    for i, node in enumerate(resizes):
        xin, xout = values[node.input[0]].shape, values[node.output[0]].shape
        if len(xin) != 4 or xin[:2] != xout[:2] or xin[3] != xout[3] or xin[2] == xout[2]:
            continue  # not a time-axis-only stretch
        h_in, h_out = int(xin[2]), int(xout[2])
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        one = helper.make_graph(
            [helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], **attrs)],
            "resize",
            [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, h_in, h_in])],
            [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 1, h_out, h_in])],
            [numpy_helper.from_array(np.array([1, 1, h_out, h_in], dtype=np.int64), "sizes")],
        )
        opset = [o for o in model.opset_import if o.domain in ("", "ai.onnx")]
        m = session(helper.make_model(one, opset_imports=opset).SerializeToString(), 1, denormal_zero=False).run(
            None, {"x": np.eye(h_in, dtype=np.float32)[None, None]}
        )[0][0, 0]  # [h_out, h_in]
        name = f"{RESIZE_MATMUL_PREFIX}_{i}"
        g.initializer.append(numpy_helper.from_array(m.astype(np.float32), f"{name}_matrix"))
        pos = list(g.node).index(node)
        g.node.remove(node)
        g.node.insert(pos, helper.make_node("MatMul", [f"{name}_matrix", node.input[0]], [node.output[0]], name=name))
        done.append(name)
    if done:
        onnx.save(model, str(dst or path))
    return done


def check_model(path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:  # noqa: BLE001 - the checker raises several unrelated types
        raise ModelError(f"onnx.checker rejected {path.name}: {str(e).splitlines()[0][:200]}") from None


def quantise_dynamic_int8(
    fp32_path: Path, int8_path: Path, exclude: list[str] | None = None, unsigned_weights: bool = False
) -> None:
    """The int8 quantisation of ``export --int8`` (int8 weights in 7 bits, one scale per output
    channel; activations quantised per call);
    ``bench`` measures the matmul rate of exactly this form. Needs only onnxruntime and onnx.
    ``unsigned_weights``: uint8 weights instead (how the test stand-in of the transformers.js
    ``*_quantized.onnx`` graphs is made)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantiser warns once per tensor it leaves in fp32 (hundreds of lines)
    try:
        quantize_dynamic(
            str(fp32_path),
            str(int8_path),
            weight_type=QuantType.QUInt8 if unsigned_weights else QuantType.QInt8,
            # one scale per output channel of each weight: the same speed, closer to fp32
            # (issue 19: cosine min 0.9974 against 0.9959 per tensor on held-out windows)
            per_channel=not unsigned_weights,
            # 7-bit weights: x86 CPUs without VNNI (AVX2 only) multiply uint8 activations by
            # int8 weights in int16 pairs that saturate, worst with per-channel scales (the
            # tiny test encoder on an AMD EPYC: cosine 0.973 at 8 bits, 0.9987 at 7)
            reduce_range=not unsigned_weights,
            nodes_to_exclude=list(exclude or []),
        )
    finally:
        root.setLevel(level)
