"""int8 weights handed to this CPU's exact kernel (`needle_core.int8_kernels`): the byte-level rewrite
against the ONNX library's reading of the same model, the probe, and the bundled encoder."""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")  # the reference reader (the train extra); the engine does not need it
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from needle_core import int8_kernels  # noqa: E402
from needle_core.api import bundled_model_dir  # noqa: E402
from training.export import unsigned_int8_weights  # noqa: E402

RNG = np.random.default_rng(3)
# the products that saturate AVX2's u8 x s8 pair sums sit beside ordinary ones
WEIGHTS = RNG.choice(np.array([-128, -127, 127, 126, 3, -5], np.int8), size=(64, 8))
ZERO = np.arange(8, dtype=np.int8) - 4


def _matmul_model(path, with_zero_point: bool) -> None:
    inits = [numpy_helper.from_array(WEIGHTS, "w")]
    inputs = ["a", "w", ""]
    if with_zero_point:
        inits.append(numpy_helper.from_array(ZERO, "w_zero"))
        inputs.append("w_zero")
    graph = helper.make_graph([helper.make_node("MatMulInteger", inputs, ["y"])], "g",
                              [helper.make_tensor_value_info("a", TensorProto.UINT8, ["M", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, ["M", 8])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


@pytest.mark.parametrize("with_zero_point", [True, False])
def test_unsigned_int8_weights_keep_every_product_exact(tmp_path, with_zero_point):
    """int8 weights stored as uint8 (+128, zero point too) give the exact integer products on any CPU,
    also where u8 x s8 kernels saturate (activations near 255 beside weights near +-127)."""
    import onnxruntime as ort

    path = tmp_path / "mm.onnx"
    _matmul_model(path, with_zero_point)
    assert unsigned_int8_weights(path) == 1
    stored = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    assert all(v.dtype == np.uint8 for v in stored.values())
    a = np.full((4, 64), 255, np.uint8)
    a[1] = RNG.integers(0, 256, 64)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"a": a})[0]
    exact = a.astype(np.int64) @ (WEIGHTS.astype(np.int64) - (ZERO if with_zero_point else 0))
    np.testing.assert_array_equal(got, exact)


def test_the_bundled_encoder_stores_its_int8_weights_unsigned():
    """The shipped model went through `unsigned_int8_weights`: no signed MatMulInteger weight is
    left for a CPU without VNNI/AMX to saturate."""
    import onnx

    from needle_core.api import bundled_model_dir

    graph = onnx.load(str(bundled_model_dir() / "encoder.onnx")).graph
    types = {i.name: i.data_type for i in graph.initializer}
    weights = [n.input[1] for n in graph.node if n.op_type == "MatMulInteger"]
    assert weights and all(types[w] == onnx.TensorProto.UINT8 for w in weights)


@pytest.mark.parametrize("with_zero_point", [True, False])
def test_turning_unsigned_weights_signed_in_place_restores_the_signed_integers(tmp_path, with_zero_point):
    """Export stores weights unsigned (+128); the in-place byte rewrite gives back int8 tensors whose
    values minus their zero points are the original integers, in a model the ONNX checker accepts."""
    path = tmp_path / "mm.onnx"
    _matmul_model(path, with_zero_point)
    unsigned_int8_weights(path)
    data = bytearray(path.read_bytes())
    assert int8_kernels.turn_signed_in_place(data) == 2  # the weight and its zero point
    model = onnx.load_from_string(bytes(data))
    onnx.checker.check_model(model)
    stored = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    weight_name, zero_name = model.graph.node[0].input[1], model.graph.node[0].input[3]
    assert stored[weight_name].dtype == np.int8 and stored[zero_name].dtype == np.int8
    expected = WEIGHTS.astype(np.int16) - (ZERO if with_zero_point else 0)
    np.testing.assert_array_equal(stored[weight_name].astype(np.int16) - stored[zero_name], expected)
    assert int8_kernels.turn_signed_in_place(data) == 0  # already signed: nothing more to turn
    assert int8_kernels.graph_for_this_cpu(path, signed=True) == (bytes(data), "u8 x s8")
    assert int8_kernels.graph_for_this_cpu(path, signed=False) == (None, "u8 x u8")


def test_a_matmul_without_zero_point_is_left_as_stored(tmp_path):
    """Adding a zero point would move bytes: the rewrite declines and the graph runs as stored."""
    path = tmp_path / "mm.onnx"
    _matmul_model(path, with_zero_point=False)  # signed, no zero point: the form quantize_dynamic writes
    data = bytearray(path.read_bytes())
    assert int8_kernels.turn_signed_in_place(data) == 0
    assert bytes(data) == path.read_bytes()
    assert int8_kernels.graph_for_this_cpu(path, signed=True) == (None, "u8 x s8")  # runs as stored


def test_a_weight_another_node_reads_too_is_left_as_stored(tmp_path):
    """Turning a tensor signed would break a node of another kind that reads it (its input types)."""
    path = tmp_path / "mm.onnx"
    _matmul_model(path, with_zero_point=True)
    unsigned_int8_weights(path)
    model = onnx.load(str(path))
    model.graph.node.append(helper.make_node("Identity", [model.graph.node[0].input[3]], ["zero_copy"]))
    model.graph.output.append(helper.make_tensor_value_info("zero_copy", TensorProto.UINT8, [8]))
    data = bytearray(model.SerializeToString())
    assert int8_kernels.turn_signed_in_place(data) == 0
    assert bytes(data) == model.SerializeToString()


def test_the_probe_is_a_valid_model_and_answers_for_this_cpu():
    """The hand-written probe model passes the ONNX checker and computes exact products where the
    probe says u8 x s8 is exact; the u8 x u8 form is exact on every CPU."""
    import onnxruntime as ort

    weights = RNG.choice(np.array([127, -128, 4], np.int8), size=(32, 4))
    onnx.checker.check_model(onnx.load_from_string(int8_kernels._probe_model(weights)))
    assert isinstance(int8_kernels.signed_products_exact(), bool)
    a = np.full((3, 32), 255, np.uint8)
    got = ort.InferenceSession(int8_kernels._probe_model(weights), providers=["CPUExecutionProvider"]) \
        .run(None, {"a": a})[0]
    exact = a.astype(np.int64) @ weights.astype(np.int64)
    assert np.array_equal(got, exact) or not int8_kernels.signed_products_exact()


def test_every_form_of_the_bundled_model_gives_the_same_states():
    """The bundled encoder run as stored (u8 x u8) and turned signed (u8 x s8) on a CPU whose signed
    products are exact: bit-identical states, so identical calls. A graph without int8 MatMuls (the
    int4 decoder) is handed over unchanged."""
    from needle_core.engine import OnnxEngine

    model_dir = bundled_model_dir()
    if not (model_dir / "encoder.onnx").is_file():
        pytest.skip("no bundled model")
    assert int8_kernels.graph_for_this_cpu(model_dir / "decoder.onnx") == (None, "")
    stored = OnnxEngine(model_dir, threads=1, signed_int8=False)
    assert stored.int8_form == "u8 x u8"
    if not int8_kernels.signed_products_exact():
        pytest.skip("this CPU's u8 x s8 products are not exact: the engine keeps the stored form")
    turned = OnnxEngine(model_dir, threads=1)
    assert turned.int8_form == "u8 x s8"
    ids = [[101] + list(RNG.integers(1000, 20000, n)) + [102] for n in (5, 60, 300)]
    a, b = stored.encode(ids), turned.encode(ids)
    for key in ("enc", "ptr_keys"):
        np.testing.assert_array_equal(a[key], b[key])


def test_a_probe_that_cannot_run_keeps_the_stored_form(monkeypatch):
    """Whatever ONNX Runtime build is installed, a failing probe means "not exact": the model loads
    and runs its weights as stored."""
    import onnxruntime as ort

    def refuse(*args, **kwargs):
        raise RuntimeError("no MatMulInteger here")

    monkeypatch.setattr(ort, "InferenceSession", refuse)
    int8_kernels.signed_products_exact.cache_clear()
    try:
        assert int8_kernels.signed_products_exact() is False
    finally:
        int8_kernels.signed_products_exact.cache_clear()
