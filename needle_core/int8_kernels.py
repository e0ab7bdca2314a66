"""Which int8 weight form to run on this CPU: the one it multiplies exactly, and the faster when both are.

ONNX Runtime multiplies the encoder's uint8 activations by its int8 weights. Stored unsigned
(u8 x u8, zero point 128: `training.export.unsigned_int8_weights`) the products are exact on every
CPU; stored signed (u8 x s8) they are exact only where the CPU adds products in 32 bits (VNNI, AMX):
AVX2's ``vpmaddubsw`` saturates the 16-bit sum of two neighbouring products. Where u8 x s8 is exact
it is also the faster path (2-core AMD EPYC with AVX-512 VNNI, the shipped encoder on a 105-token
input, one thread: 19.6 ms unsigned, 11.0 ms signed, identical outputs). So models ship unsigned,
and at load time a probe asks this CPU whether its u8 x s8 products are exact; if they are, the
weights are turned signed. Moving a weight and its zero point by 128 keeps every integer product,
so both forms give the same answers.

Both steps work on the ONNX protobuf bytes directly: turning uint8 into int8 is one byte of
``data_type`` (2 -> 3) and the top bit of every ``raw_data`` byte (u - 128 in two's complement is
u XOR 0x80), so nothing moves and no ONNX library is needed at run time (``import onnx`` alone
takes ~0.6 s, and a parsed copy of the encoder would cost its size again in memory).
"""
from __future__ import annotations

import mmap
import os
from functools import lru_cache

import numpy as np

# ONNX protobuf field numbers (onnx/onnx.proto) and element types used here
_MODEL_GRAPH, _MODEL_IR_VERSION, _MODEL_OPSET = 7, 1, 8
_GRAPH_NODE, _GRAPH_NAME, _GRAPH_INITIALIZER, _GRAPH_INPUT, _GRAPH_OUTPUT = 1, 2, 5, 11, 12
_NODE_INPUT, _NODE_OUTPUT, _NODE_OP_TYPE = 1, 2, 4
_TENSOR_DIMS, _TENSOR_DATA_TYPE, _TENSOR_NAME, _TENSOR_RAW_DATA = 1, 2, 8, 9
_UINT8, _INT8, _INT32 = 2, 3, 6
_VARINT, _LENGTH_DELIMITED = 0, 2


def _read_varint(buf, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf, start: int, end: int):
    """(field number, wire type, value start, value end, varint value) of each field in buf[start:end]."""
    pos = start
    while pos < end:
        key, pos = _read_varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, after = _read_varint(buf, pos)
            yield field, wire, pos, after, value
        elif wire == _LENGTH_DELIMITED:
            length, pos = _read_varint(buf, pos)
            yield field, wire, pos, pos + length, length
            after = pos + length
        elif wire in (1, 5):  # fixed 64 / 32 bits
            after = pos + (8 if wire == 1 else 4)
            yield field, wire, pos, after, None
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        pos = after


def _sub(buf, start: int, end: int, field: int) -> list[tuple[int, int]]:
    """The spans of every length-delimited ``field`` in buf[start:end]."""
    return [(s, e) for f, w, s, e, _ in _fields(buf, start, end) if f == field and w == _LENGTH_DELIMITED]


def _int8_weights(data) -> tuple[list[tuple[int, int, int, int]], bool]:
    """(data_type byte position, data_type, raw_data start, end) of every ``MatMulInteger`` weight and
    zero point that is an initializer, and whether an in-place rewrite covers them all (not when a
    MatMul has no zero point, which would have to be added, a weight is not in raw_data, or another
    kind of node reads one of them too)."""
    buf = memoryview(data)
    graph = _sub(buf, 0, len(buf), _MODEL_GRAPH)
    if len(graph) != 1:
        return [], False
    g_start, g_end = graph[0]
    wanted: set[bytes] = set()
    used_elsewhere: set[bytes] = set()  # inputs of other nodes: a tensor they share must keep its type
    in_place = True
    for n_start, n_end in _sub(buf, g_start, g_end, _GRAPH_NODE):
        op_type = b"".join(bytes(buf[s:e]) for s, e in _sub(buf, n_start, n_end, _NODE_OP_TYPE))
        inputs = [bytes(buf[s:e]) for s, e in _sub(buf, n_start, n_end, _NODE_INPUT)]
        if op_type != b"MatMulInteger":
            used_elsewhere.update(inputs)
            continue
        in_place &= len(inputs) > 3 and bool(inputs[3])
        wanted.update(inputs[1:2] + inputs[3:4])
    in_place &= not wanted & used_elsewhere
    found = []
    for t_start, t_end in _sub(buf, g_start, g_end, _GRAPH_INITIALIZER):
        name = dtype_pos = dtype = raw = None
        for field, wire, s, e, value in _fields(buf, t_start, t_end):
            if field == _TENSOR_NAME and wire == _LENGTH_DELIMITED:
                name = bytes(buf[s:e])
            elif field == _TENSOR_DATA_TYPE and wire == _VARINT:
                dtype_pos, dtype = s, value
            elif field == _TENSOR_RAW_DATA and wire == _LENGTH_DELIMITED:
                raw = (s, e)
        if name in wanted:
            wanted.discard(name)
            in_place &= raw is not None and dtype in (_UINT8, _INT8)
            found.append((dtype_pos, dtype, *(raw or (0, 0))))
    return found, in_place and not wanted


def turn_signed_in_place(data) -> int:
    """Turn a graph's uint8 ``MatMulInteger`` weights and zero points int8 (each moved by -128) in
    place; returns how many tensors changed (0: none unsigned, or a form `_int8_weights` does not cover)."""
    weights, in_place = _int8_weights(data)
    return _turn_signed(data, weights) if in_place else 0


def _turn_signed(data, weights: list[tuple[int, int, int, int]]) -> int:
    """Turn the uint8 tensors among `_int8_weights`' ``weights`` int8 in ``data``; returns how many."""
    unsigned = [w for w in weights if w[1] == _UINT8]
    as_array = np.frombuffer(data, np.uint8)
    for dtype_pos, _, start, end in unsigned:
        data[dtype_pos] = _INT8  # a one-byte varint either way
        as_array[start:end] ^= 0x80  # u - 128 as a two's-complement byte
    return len(unsigned)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes | int) -> bytes:
    if isinstance(payload, int):
        return _varint(number << 3 | _VARINT) + _varint(payload)
    return _varint(number << 3 | _LENGTH_DELIMITED) + _varint(len(payload)) + payload


def _tensor_info(name: str, elem_type: int, dims: list[int | str]) -> bytes:
    """A ValueInfoProto: name, TypeProto.tensor_type (elem_type, shape of dim_value / dim_param)."""
    shape = b"".join(_field(1, _field(1, d) if isinstance(d, int) else _field(2, d.encode())) for d in dims)
    return _field(1, name.encode()) + _field(2, _field(1, _field(1, elem_type) + _field(2, shape)))


def _probe_model(weights: np.ndarray) -> bytes:
    """An ONNX model computing ``a @ weights`` with MatMulInteger (u8 activations ``a`` of shape [M, K])."""
    k, n = weights.shape
    node = _field(_NODE_INPUT, b"a") + _field(_NODE_INPUT, b"w") + _field(_NODE_OUTPUT, b"y") + \
        _field(_NODE_OP_TYPE, b"MatMulInteger")
    tensor = _field(_TENSOR_DIMS, k) + _field(_TENSOR_DIMS, n) + _field(_TENSOR_DATA_TYPE, _INT8) + \
        _field(_TENSOR_NAME, b"w") + _field(_TENSOR_RAW_DATA, weights.astype(np.int8).tobytes())
    graph = _field(_GRAPH_NODE, node) + _field(_GRAPH_NAME, b"u8s8_probe") + _field(_GRAPH_INITIALIZER, tensor) + \
        _field(_GRAPH_INPUT, _tensor_info("a", _UINT8, ["M", k])) + \
        _field(_GRAPH_OUTPUT, _tensor_info("y", _INT32, ["M", n]))
    opset = _field(1, b"") + _field(2, 17)
    return _field(_MODEL_IR_VERSION, 8) + _field(_MODEL_GRAPH, graph) + _field(_MODEL_OPSET, opset)


@lru_cache(maxsize=1)
def signed_products_exact() -> bool:
    """True when this CPU's ONNX Runtime multiplies u8 activations by s8 weights exactly.

    The probe holds the products that overflow a 16-bit pair sum (255 x 127 twice is 64,770), so a
    kernel built on ``vpmaddubsw`` fails it and a VNNI or AMX kernel passes; it runs a single row too
    (matrix-vector kernels) and several rows (the packed kernels the encoder uses)."""
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    weights = rng.choice(np.array([127, 126, -128, -127, 5, -3], np.int8), size=(256, 32))
    activations = np.full((8, 256), 255, np.uint8)
    activations[4:] = rng.integers(0, 256, (4, 256))
    exact = activations.astype(np.int64) @ weights.astype(np.int64)
    try:
        session = ort.InferenceSession(_probe_model(weights), providers=["CPUExecutionProvider"])
        return all(np.array_equal(session.run(None, {"a": activations[rows]})[0], exact[rows])
                   for rows in (slice(0, 1), slice(0, 8)))
    except Exception:  # noqa: BLE001  an ONNX Runtime that cannot run the probe keeps the stored form
        return False


def graph_for_this_cpu(path, signed: bool | None = None) -> tuple[bytes | None, str]:
    """The bytes of an ONNX graph file with its int8 MatMul weights turned into the form to run
    here, or None where the file runs as stored; and the form it runs ("u8 x s8", "u8 x u8", or ""
    for a graph without int8 MatMuls). ``signed``: True turns unsigned weights signed, False runs
    the graph as stored, None (default) turns them signed where `signed_products_exact`.

    The file is read into an anonymous memory map, changed there and copied out once. A map, not a
    heap buffer: unmapping it leaves glibc's allocator as it was, while freeing a heap buffer this
    large raises glibc's mmap threshold, after which ONNX Runtime's own load buffers stayed
    resident (31 MB more after load, measured)."""
    size = os.path.getsize(path)
    with open(path, "rb") as fh, mmap.mmap(-1, max(size, 1)) as data:
        fh.readinto(data)
        view = memoryview(data)[:size]
        weights, in_place = _int8_weights(view)
        unsigned = any(w[1] == _UINT8 for w in weights)
        turn = in_place and unsigned and (signed or (signed is None and signed_products_exact()))
        turned = bytes(view) if turn and _turn_signed(view, weights) else None
        view.release()
    form = "" if not weights else "u8 x u8" if unsigned and turned is None else "u8 x s8"
    return turned, form
