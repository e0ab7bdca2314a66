"""Weights between PyTorch and a model folder's ONNX graphs, in both directions.

The package ships ONNX graphs only (quantized), and training checkpoints are not kept in git. To
continue training the shipped model (`needle train` with ``init_from`` a model folder or
``"bundled"``), to fine-tune it (`needle finetune`) or to time it in PyTorch (`needle bench
--torch-checkpoint`), its PyTorch model is rebuilt here from the graphs' initializers,
dequantized: int8 weights are exact to their scale, 4-bit ones lose what quantization lost.

The exporter renames transposed Linear weights (``onnx::MatMul_N``), so each graph's initializer
is matched to its parameter by value once, at export (`initializer_map`, kept in
``needle.json`` as ``decoder_params`` and ``encoder_params``).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from needle_core.modeling_needle import NeedleConfig, NeedleForToolCalling

# Decoder parameters computed inside the encoder graph (once per request, not per step).
DECODER_PARTS_IN_ENCODER_GRAPH = ("cross_attn.k.", "cross_attn.v.", "ptr_key.")


def in_encoder_graph(param_name: str) -> bool:
    return param_name.startswith("encoder.") or any(part in param_name for part in DECODER_PARTS_IN_ENCODER_GRAPH)


def initializer_map(model: NeedleForToolCalling, onnx_path: Path, encoder_graph: bool) -> dict[str, list]:
    """PyTorch parameter name -> [ONNX initializer name, transposed?] for one graph of ``model``.

    Keyed by parameter: the exporter keeps one initializer for parameters of equal value (the
    ones and zeros of untrained layer norms), so several parameters may read the same one."""
    import onnx
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(onnx_path)).graph.initializer}
    out = {}
    for name, param in model.named_parameters():
        if in_encoder_graph(name) != encoder_graph:
            continue
        p = param.detach().numpy()
        if "model." + name in inits:
            out[name] = ["model." + name, False]
            continue
        for onnx_name, value in inits.items():
            if p.shape == value.shape and np.array_equal(p, value):
                out[name] = [onnx_name, False]
                break
            if p.ndim == 2 and p.T.shape == value.shape and np.array_equal(p.T, value):
                out[name] = [onnx_name, True]
                break
    return out


def dequantize_q4(packed: np.ndarray, scales: np.ndarray, k: int) -> np.ndarray:
    """MatMulNBits weights ([N, blocks, 16] bytes, two 4-bit values each, zero point 8) -> [K, N] floats."""
    low, high = packed & 0x0F, packed >> 4
    nibbles = np.stack([low, high], axis=-1).reshape(packed.shape[0], packed.shape[1], -1).astype(np.float32)
    values = (nibbles - 8.0) * scales.reshape(packed.shape[0], packed.shape[1], 1)
    return values.reshape(packed.shape[0], -1)[:, :k].T


def _initializer_value(inits: dict, onnx_name: str, rows: int, graph: Path) -> np.ndarray:
    """The float value of one initializer, as stored (fp32) or dequantized (int8 / 4-bit, whose
    padded blocks are cut to the weight's ``rows``)."""
    if onnx_name in inits:
        return inits[onnx_name].astype(np.float32)
    if onnx_name + "_quantized" in inits:  # dynamic int8: (q - zero_point) * scale, per tensor or per column
        q = inits[onnx_name + "_quantized"].astype(np.float32)
        return (q - inits[onnx_name + "_zero_point"].astype(np.float32)) * inits[onnx_name + "_scale"]
    if onnx_name + "_Q4" in inits:
        return dequantize_q4(inits[onnx_name + "_Q4"], inits[onnx_name + "_scales"], rows)
    raise ValueError(f"{graph} has no initializer {onnx_name!r} (plain or quantized); was it exported by needle export?")


def model_from_onnx(model_dir: str | Path, decoder_only: bool = False) -> NeedleForToolCalling:
    """The PyTorch model whose weights are the (dequantized) initializers of a model folder's graphs.

    With ``decoder_only``, only the decoder graph is read (what `needle finetune` trains); the
    parameters the encoder graph holds keep their fresh initialisation.
    """
    import onnx
    from onnx import numpy_helper

    model_dir = Path(model_dir)
    meta = json.loads((model_dir / "needle.json").read_text())
    graphs = [("decoder.onnx", "decoder_params", False)] + ([] if decoder_only else [("encoder.onnx", "encoder_params", True)])
    lacking = [key for _, key, _ in graphs if key not in meta] + ([] if "config" in meta else ["config"])
    if lacking:
        raise ValueError(f"{model_dir}/needle.json lacks {', '.join(lacking)}, needed to rebuild the PyTorch model "
                         f"(exported by an older needle export: re-export its checkpoint)")
    config = NeedleConfig(**{k: v for k, v in meta["config"].items() if k in NeedleConfig().to_dict()})
    model = NeedleForToolCalling(config)
    params = dict(model.named_parameters())
    loaded = set()
    for graph_name, map_key, encoder_graph in graphs:
        graph = model_dir / graph_name
        inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(graph)).graph.initializer}
        for param_name, (onnx_name, transposed) in meta[map_key].items():
            param = params[param_name]
            rows = param.shape[1] if transposed else param.shape[0]
            value = _initializer_value(inits, onnx_name, rows, graph)
            value = value.T if transposed else value
            if value.size != param.numel():
                raise ValueError(f"{graph}: {onnx_name!r} holds {value.shape}, but {param_name} is {tuple(param.shape)}")
            with torch.no_grad():
                param.copy_(torch.from_numpy(np.ascontiguousarray(value)).reshape(param.shape))
            loaded.add(param_name)
        missing = [n for n in params if in_encoder_graph(n) == encoder_graph and n not in loaded]
        if missing:
            raise ValueError(f"weights missing from {graph}: {', '.join(missing[:5])}")
    return model


def load_student(path: str | Path) -> NeedleForToolCalling:
    """A PyTorch student from a training checkpoint (``config.json`` + safetensors), a model folder
    of ONNX graphs (``needle.json``), or ``"bundled"`` (the model inside the package); fp32."""
    if str(path) == "bundled":
        from needle_core.api import bundled_model_dir

        path = bundled_model_dir()
    path = Path(path)
    if (path / "config.json").exists():
        return NeedleForToolCalling.from_pretrained(str(path)).float()
    if (path / "needle.json").exists():
        return model_from_onnx(path)
    raise FileNotFoundError(f"{path} is neither a training checkpoint (config.json) nor a model folder (needle.json)")
