"""`needle export`: a trained checkpoint -> the ONNX graphs the engine runs, quantized.

Two graphs (FIELD-NOTES section 7: a hand-written export plus an ONNX Runtime loop is lighter
than optimum for a custom architecture):

* ``encoder.onnx``: (input_ids, attention_mask) -> encoder states, every decoder layer's
  cross-attention keys/values, and the pointer keys, all computed once per request;
* ``decoder.onnx``: one decoding step with a self-attention KV cache.

Then ``quantize`` writes int8 (dynamic) or int4 (weight-only MatMulNBits) copies, and
``write_manifest`` records the SHA-256 of every file so the engine refuses tampered weights.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch

from needle_core.callformat import BOS, K_CALL
from needle_core.engine import MODEL_FORMAT

MODEL_FILES = ("encoder.onnx", "decoder.onnx", "needle.json")


class _Encoder(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        enc, cross, ptr_keys = self.model.encode(input_ids, attention_mask)
        cross_k = torch.stack([k for k, _ in cross])
        cross_v = torch.stack([v for _, v in cross])
        return enc, cross_k, cross_v, ptr_keys


class _DecoderStep(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, enc, attention_mask, cross_k, cross_v, ptr_keys, prev_action, kind, step, past_k, past_v):
        cross_mask = (1.0 - attention_mask[:, None, None, :].float()) * -1e4  # additive: one Add in the graph
        return self.model.decode_step(enc, cross_mask, cross_k, cross_v, ptr_keys, attention_mask, prev_action,
                                      kind, step, past_k, past_v)


def export_onnx(checkpoint: str, out_dir: str, opset: int = 17) -> Path:
    """Export fp32 graphs of a saved `NeedleForToolCalling` into ``out_dir``."""
    from needle_core.modeling_needle import NeedleForToolCalling

    model = NeedleForToolCalling.from_pretrained(checkpoint).float().eval()
    out = Path(out_dir)
    export_encoder(model, out, opset)
    export_decoder(model, out, opset)
    write_meta(model, out, source=Path(checkpoint).name)
    return out


def _example_inputs(model, B: int = 1, L: int = 24):
    ids = torch.randint(1000, 2000, (B, L))
    return ids, torch.ones(B, L, dtype=torch.int64)


def export_encoder(model, out: Path, opset: int = 17) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(_Encoder(model), _example_inputs(model), str(out / "encoder.onnx"), dynamo=False,
                          opset_version=opset, input_names=["input_ids", "attention_mask"],
                          output_names=["enc", "cross_k", "cross_v", "ptr_keys"],
                          dynamic_axes={"input_ids": {0: "B", 1: "L"}, "attention_mask": {0: "B", 1: "L"},
                                        "enc": {0: "B", 1: "L"}, "cross_k": {1: "B", 3: "L"},
                                        "cross_v": {1: "B", 3: "L"}, "ptr_keys": {0: "B", 1: "L"}})


def export_decoder(model, out: Path, opset: int = 17) -> None:
    """The decoder-step graph: n new steps (n >= 1) on a KV cache, KV cache out."""
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    d, layers, heads, B, T, n = cfg.d_model, cfg.decoder_layers, cfg.decoder_heads, 1, 3, 2
    ids, mask = _example_inputs(model, B)
    with torch.no_grad():
        enc, cross_k, cross_v, ptr_keys = _Encoder(model)(ids, mask)
        past = torch.zeros(layers, B, heads, T, d // heads)
        args = (enc, mask, cross_k, cross_v, ptr_keys, torch.full((B, n), BOS, dtype=torch.int64),
                torch.full((B, n), K_CALL, dtype=torch.int64), torch.arange(T, T + n).expand(B, n), past, past)
        torch.onnx.export(_DecoderStep(model), args, str(out / "decoder.onnx"), dynamo=False, opset_version=opset,
                          input_names=["enc", "attention_mask", "cross_k", "cross_v", "ptr_keys", "prev_action", "kind",
                                       "step", "past_k", "past_v"],
                          output_names=["logits", "new_k", "new_v"],
                          dynamic_axes={"enc": {0: "B", 1: "L"}, "attention_mask": {0: "B", 1: "L"},
                                        "cross_k": {1: "B", 3: "L"}, "cross_v": {1: "B", 3: "L"},
                                        "ptr_keys": {0: "B", 1: "L"}, "prev_action": {0: "B", 1: "n"},
                                        "kind": {0: "B", 1: "n"}, "step": {0: "B", 1: "n"},
                                        "past_k": {1: "B", 3: "T"}, "past_v": {1: "B", 3: "T"},
                                        "logits": {0: "B", 1: "A"}, "new_k": {1: "B", 3: "T1"},
                                        "new_v": {1: "B", 3: "T1"}})


def write_meta(model, out: Path, source: str, **extra) -> None:
    """``needle.json``: what the engine and `needle finetune` need to know about the graphs."""
    cfg = model.config
    meta = {"format": MODEL_FORMAT, "d_model": cfg.d_model, "decoder_layers": cfg.decoder_layers,
            "decoder_heads": cfg.decoder_heads, "max_steps": cfg.max_steps, "precision": "fp32",
            "source_checkpoint": source, "config": cfg.to_dict(),
            "decoder_initializers": decoder_initializer_map(model, out / "decoder.onnx"), **extra}
    (out / "needle.json").write_text(json.dumps(meta, indent=1))


def decoder_initializer_map(model, onnx_path: Path) -> dict[str, list]:
    """ONNX initializer name -> [PyTorch parameter name, transposed?] for the decoder graph.

    The exporter renames transposed Linear weights (``onnx::MatMul_N``), so they are matched by
    value. `needle finetune` uses this map to rebuild the PyTorch decoder from a shipped graph.
    """
    import numpy as np
    import onnx
    from onnx import numpy_helper

    params = {n: p.detach().numpy() for n, p in model.named_parameters() if not n.startswith("encoder.")}
    out = {}
    for init in onnx.load(str(onnx_path)).graph.initializer:
        value = numpy_helper.to_array(init)
        name = init.name.removeprefix("model.")
        if name in params:
            out[init.name] = [name, False]
            continue
        for pname, p in params.items():
            if p.shape == value.shape and np.array_equal(p, value):
                out[init.name] = [pname, False]
                break
            if p.ndim == 2 and p.T.shape == value.shape and np.array_equal(p.T, value):
                out[init.name] = [pname, True]
                break
    return out


def quantize(src_dir: str, dst_dir: str, precision: str, graphs=("encoder.onnx", "decoder.onnx")) -> Path:
    """int8: dynamic quantization of every MatMul/Gemm and embedding (`outlier_matmuls` by weight
    only); int4: weight-only 4-bit MatMuls (MatMulNBits, blocks of 32) with int8 embeddings."""
    src, dst = Path(src_dir), Path(dst_dir)
    dst.mkdir(parents=True, exist_ok=True)
    for name in graphs:
        if precision == "int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            outliers = outlier_matmuls(src / name)
            quantize_dynamic(str(src / name), str(dst / name), weight_type=QuantType.QInt8, nodes_to_exclude=outliers)
            int8_weights_only(dst / name, outliers)
        elif precision == "int4":
            # embeddings (Gather) as int8, every MatMul weight as 4-bit blocks of 32 (MatMulNBits)
            import onnx
            from onnxruntime.quantization import QuantType, quantize_dynamic
            from onnxruntime.quantization.matmul_nbits_quantizer import (DefaultWeightOnlyQuantConfig,
                                                                         MatMulNBitsQuantizer)

            gathered = dst / f"_gather_{name}"
            quantize_dynamic(str(src / name), str(gathered), weight_type=QuantType.QInt8, op_types_to_quantize=["Gather"])
            qcfg = DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=True, accuracy_level=4)
            quant = MatMulNBitsQuantizer(onnx.load(str(gathered)), algo_config=qcfg)
            quant.process()
            quant.model.save_model_to_file(str(dst / name), False)
            gathered.unlink()
        elif precision == "fp32":
            shutil.copy(src / name, dst / name)
        else:
            raise ValueError(f"unknown precision {precision!r} (fp32, int8, int4)")
    meta = json.loads((src / "needle.json").read_text())
    meta["precision"] = precision
    (dst / "needle.json").write_text(json.dumps(meta, indent=1))
    if all((dst / name).exists() for name in MODEL_FILES):
        write_manifest(dst)  # a partial quantization (finetune's decoder) is completed by its caller
    return dst


# Dynamic int8 quantizes each activation tensor with one scale; the GELU outputs entering the FFN
# output projection of the first encoder layers have outliers that this scale crushes. Those
# projections keep fp32 activations and int8 weights (dequantized in the graph): agreement with
# the fp32 model's calls rose from 0.89 to 0.96 on 400 training-source requests, for ~2 ms per
# request and 2 MB (README, "Precision").
INT8_WEIGHT_ONLY_FFN_LAYERS = (0, 1, 2)


def outlier_matmuls(graph_path: Path) -> list[str]:
    """Names of the MatMuls that int8 quantizes by weight only (see `INT8_WEIGHT_ONLY_FFN_LAYERS`)."""
    import onnx

    wanted = tuple(f"layer.{i}/output/dense/MatMul" for i in INT8_WEIGHT_ONLY_FFN_LAYERS)
    return [n.name for n in onnx.load(str(graph_path)).graph.node if n.op_type == "MatMul" and n.name.endswith(wanted)]


def int8_weights_only(graph_path: Path, node_names: list[str]) -> None:
    """Store these MatMuls' constant weights as int8 per output channel, dequantized by a
    ``DequantizeLinear`` node in front (fp32 activations, a quarter of the bytes)."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    if not node_names:
        return
    model = onnx.load(str(graph_path))
    graph = model.graph
    weights = {node.input[1] for node in graph.node if node.name in node_names}
    kept, added, dequantize = [], [], []
    for init in graph.initializer:
        if init.name not in weights:
            kept.append(init)
            continue
        w = numpy_helper.to_array(init)  # [in, out]
        scale = np.maximum(np.abs(w).max(axis=0), 1e-12).astype(np.float32) / 127
        q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
        names = (f"{init.name}_int8", f"{init.name}_scale", f"{init.name}_zero")
        added += [numpy_helper.from_array(q, names[0]), numpy_helper.from_array(scale, names[1]),
                  numpy_helper.from_array(np.zeros(q.shape[1], np.int8), names[2])]
        dequantize.append(helper.make_node("DequantizeLinear", list(names), [init.name], axis=1,
                                           name=f"{init.name}_dequantize"))
    del graph.initializer[:]
    graph.initializer.extend(kept + added)
    nodes = dequantize + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(graph_path))


def write_manifest(model_dir: str | Path) -> None:
    """``manifest.json``: SHA-256 and size of every model file, checked by the engine at load."""
    model_dir = Path(model_dir)
    files = {}
    for name in MODEL_FILES:
        data = (model_dir / name).read_bytes()
        files[name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (model_dir / "manifest.json").write_text(json.dumps({"files": files}, indent=1))


def add_arguments(parser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint folder written by needle train")
    parser.add_argument("--out", required=True, help="folder for the ONNX model")
    parser.add_argument("--precision", choices=["fp32", "int8", "int4"], default="int8")


def run(args) -> int:
    fp32_dir = Path(args.out) / "_fp32" if args.precision != "fp32" else Path(args.out)
    export_onnx(args.checkpoint, str(fp32_dir))
    if args.precision == "fp32":
        write_manifest(fp32_dir)
    else:
        quantize(str(fp32_dir), args.out, args.precision)
        shutil.rmtree(fp32_dir)
    print(f"wrote {args.precision} model to {args.out}")
    return 0
