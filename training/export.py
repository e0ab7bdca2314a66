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
        cross_mask = attention_mask.bool()[:, None, None, :]
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
    """The one-step decoder graph (KV cache in, KV cache out)."""
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    d, layers, heads, B, T = cfg.d_model, cfg.decoder_layers, cfg.decoder_heads, 1, 3
    ids, mask = _example_inputs(model, B)
    with torch.no_grad():
        enc, cross_k, cross_v, ptr_keys = _Encoder(model)(ids, mask)
        past = torch.zeros(layers, B, heads, T, d // heads)
        args = (enc, mask, cross_k, cross_v, ptr_keys, torch.full((B,), BOS, dtype=torch.int64),
                torch.full((B,), K_CALL, dtype=torch.int64), torch.full((B,), T, dtype=torch.int64), past, past)
        torch.onnx.export(_DecoderStep(model), args, str(out / "decoder.onnx"), dynamo=False, opset_version=opset,
                          input_names=["enc", "attention_mask", "cross_k", "cross_v", "ptr_keys", "prev_action", "kind",
                                       "step", "past_k", "past_v"],
                          output_names=["logits", "new_k", "new_v"],
                          dynamic_axes={"enc": {0: "B", 1: "L"}, "attention_mask": {0: "B", 1: "L"},
                                        "cross_k": {1: "B", 3: "L"}, "cross_v": {1: "B", 3: "L"},
                                        "ptr_keys": {0: "B", 1: "L"}, "prev_action": {0: "B"}, "kind": {0: "B"},
                                        "step": {0: "B"}, "past_k": {1: "B", 3: "T"}, "past_v": {1: "B", 3: "T"},
                                        "logits": {0: "B", 1: "A"}, "new_k": {1: "B", 3: "T1"},
                                        "new_v": {1: "B", 3: "T1"}})


def write_meta(model, out: Path, source: str, **extra) -> None:
    """``needle.json``: what the engine and `needle finetune` need to know about the graphs."""
    cfg = model.config
    meta = {"format": "needle-onnx/1", "d_model": cfg.d_model, "decoder_layers": cfg.decoder_layers,
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
    """int8: dynamic quantization of every MatMul/Gemm and embedding; int4: weight-only 4-bit MatMuls
    (MatMulNBits, blocks of 32) with int8 embeddings."""
    src, dst = Path(src_dir), Path(dst_dir)
    dst.mkdir(parents=True, exist_ok=True)
    for name in graphs:
        if precision == "int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantize_dynamic(str(src / name), str(dst / name), weight_type=QuantType.QInt8)
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
