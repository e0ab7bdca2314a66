"""`needle export`: a trained checkpoint -> the ONNX graphs the engine runs, quantized.

Two graphs (FIELD-NOTES section 7: a hand-written export plus an ONNX Runtime loop is lighter
than optimum for a custom architecture):

* ``encoder.onnx``: (input_ids, attention_mask) -> encoder states, every decoder layer's
  cross-attention keys/values, and the pointer keys, all computed once per request;
* ``decoder.onnx``: one decoding step with a self-attention KV cache.

Then ``quantize`` writes int8 (dynamic), int4 (weight-only MatMulNBits) or mixed copies, and
``write_manifest`` records the SHA-256 of every file so the engine refuses tampered weights.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.onnx.symbolic_helper import _optional_input_placeholder_tensor

from needle_core.callformat import BOS, K_CALL
from needle_core.engine import MODEL_FORMAT, cache_names, file_sha256
from needle_core.modeling_needle import NeedleForToolCalling, causal_mask, split_heads

MODEL_FILES = ("encoder.onnx", "decoder.onnx", "needle.json")


class _MultiHeadAttention(torch.autograd.Function):
    """Attention of projected queries [B, S, D] over keys and values ([B, L, D], or already split
    per head [B, h, L, dh] as the decoder's cached cross-attention ones are), unpadded keys only:
    PyTorch's SDPA when run, one ONNX Runtime ``com.microsoft.MultiHeadAttention`` node when
    exported (in place of the ~15 reshape / transpose / mask / softmax nodes of the traced SDPA;
    the int8 encoder runs ~13% faster, README "Speed and size")."""

    @staticmethod
    def forward(ctx, q, k, v, attention_mask, heads: int):
        B, S, D = q.shape
        k, v = (x if x.dim() == 4 else split_heads(x, heads, D // heads) for x in (k, v))
        out = F.scaled_dot_product_attention(split_heads(q, heads, D // heads), k, v,
                                             attn_mask=attention_mask.bool()[:, None, None, :])
        return out.transpose(1, 2).reshape(B, S, D)

    @staticmethod
    def symbolic(g, q, k, v, attention_mask, heads):
        key_padding_mask = g.op("Cast", attention_mask, to_i=6)  # int32, 1 = a real token
        return g.op("com.microsoft::MultiHeadAttention", q, k, v, _optional_input_placeholder_tensor(g),
                    key_padding_mask, num_heads_i=heads)


class _CachedSelfAttention(torch.autograd.Function):
    """The decoder's causal self-attention of ``n`` new steps [B, n, D] on a K/V cache [B, h, T, dh]
    (step i sees the cache and new steps up to itself); returns the attention and the grown
    cache. Exported as one ``MultiHeadAttention`` node with past/present K/V (``unidirectional``),
    in place of the traced concat / causal-mask / softmax chain of every decoder step."""

    @staticmethod
    def forward(ctx, q, k, v, past_k, past_v, heads: int):
        B, n, D = q.shape
        k, v = (torch.cat([past, split_heads(x, heads, D // heads)], 2) for past, x in ((past_k, k), (past_v, v)))
        out = F.scaled_dot_product_attention(split_heads(q, heads, D // heads), k, v,
                                             attn_mask=causal_mask(n, k.shape[2]))
        return out.transpose(1, 2).reshape(B, n, D), k, v

    @staticmethod
    def symbolic(g, q, k, v, past_k, past_v, heads):
        none = _optional_input_placeholder_tensor(g)
        return g.op("com.microsoft::MultiHeadAttention", q, k, v, none, none, none, past_k, past_v,
                    num_heads_i=heads, unidirectional_i=1, outputs=3)


class _Encoder(torch.nn.Module):
    """The encoder graph: MiniLM's forward (BertModel's, written out so that attention exports as
    one fused node; `test_encoder_outputs_match` holds it to PyTorch's) and what every decoder
    step reuses: per-layer cross-attention keys/values and the pointer keys."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        bert = self.model.encoder
        emb, heads = bert.embeddings, bert.config.num_attention_heads
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        x = emb.word_embeddings(input_ids) + emb.position_embeddings(positions)
        x = emb.LayerNorm(x + emb.token_type_embeddings(torch.zeros_like(input_ids)))
        for layer in bert.encoder.layer:
            attn = layer.attention
            context = _MultiHeadAttention.apply(attn.self.query(x), attn.self.key(x), attn.self.value(x),
                                                attention_mask, heads)
            x = attn.output.LayerNorm(attn.output.dense(context) + x)
            x = layer.output.LayerNorm(layer.output.dense(layer.intermediate(x)) + x)
        cross, ptr_keys = self.model.decoder_memory(x)
        return (x, *[k for k, _ in cross], *[v for _, v in cross], ptr_keys)


class _DecoderStep(torch.nn.Module):
    """The decoder-step graph: `NeedleForToolCalling.decode_step` written out (as `_Encoder` writes
    out BertModel's forward) so that both attentions of each layer export as fused nodes;
    `test_onnx_calls_and_logits_equal_pytorch` holds it to ``decode_step``."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, enc, attention_mask, ptr_keys, prev_action, kind, step, *caches):
        """``caches``: cross_k, cross_v, past_k, past_v, each one tensor per layer (`cache_names`)."""
        model, heads = self.model, self.model.config.decoder_heads
        n = model.config.decoder_layers
        cross_k, cross_v, past_k, past_v = (caches[i * n:(i + 1) * n] for i in range(4))
        x = model.step_inputs(enc, prev_action, kind, step)
        new_k, new_v = [], []
        for i, layer in enumerate(model.layers):
            h, attn = layer.norm1(x), layer.self_attn
            out, k, v = _CachedSelfAttention.apply(attn.q(h), attn.k(h), attn.v(h), past_k[i], past_v[i], heads)
            x = x + attn.o(out)
            attn = layer.cross_attn
            x = x + attn.o(_MultiHeadAttention.apply(attn.q(layer.norm2(x)), cross_k[i], cross_v[i], attention_mask,
                                                     heads))
            x = x + layer.ffn(layer.norm3(x))
            new_k.append(k)
            new_v.append(v)
        logits = model.scores(x[:, -1:], ptr_keys, attention_mask)[:, 0]
        return (logits, *new_k, *new_v)


def export_onnx(checkpoint: str, out_dir: str, opset: int = 17) -> Path:
    """Export fp32 graphs of a saved `NeedleForToolCalling` into ``out_dir``."""
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
    caches = cache_names("cross", model.config.decoder_layers)
    dynamic = {"input_ids": {0: "B", 1: "L"}, "attention_mask": {0: "B", 1: "L"}, "enc": {0: "B", 1: "L"},
               "ptr_keys": {0: "B", 1: "L"}, **{name: {0: "B", 2: "L"} for name in caches}}
    with torch.no_grad():
        torch.onnx.export(_Encoder(model), _example_inputs(model), str(out / "encoder.onnx"), dynamo=False,
                          opset_version=opset, custom_opsets={"com.microsoft": 1},
                          input_names=["input_ids", "attention_mask"], output_names=["enc", *caches, "ptr_keys"],
                          dynamic_axes=dynamic)


def export_decoder(model, out: Path, opset: int = 17) -> None:
    """The decoder-step graph: n new steps (n >= 1) on a KV cache, KV cache out."""
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    d, layers, heads, B, T, n = cfg.d_model, cfg.decoder_layers, cfg.decoder_heads, 1, 3, 2
    ids, mask = _example_inputs(model, B)
    cross_names, past_names, new_names = (cache_names(prefix, layers) for prefix in ("cross", "past", "new"))
    dynamic = {"enc": {0: "B", 1: "L"}, "attention_mask": {0: "B", 1: "L"}, "ptr_keys": {0: "B", 1: "L"},
               "prev_action": {0: "B", 1: "n"}, "kind": {0: "B", 1: "n"}, "step": {0: "B", 1: "n"},
               "logits": {0: "B", 1: "A"}, **{name: {0: "B", 2: "L"} for name in cross_names},
               **{name: {0: "B", 2: "T"} for name in past_names}, **{name: {0: "B", 2: "T1"} for name in new_names}}
    with torch.no_grad():
        enc, *cross, ptr_keys = _Encoder(model)(ids, mask)
        past = [torch.zeros(B, heads, T, d // heads)] * (2 * layers)
        args = (enc, mask, ptr_keys, torch.full((B, n), BOS, dtype=torch.int64),
                torch.full((B, n), K_CALL, dtype=torch.int64), torch.arange(T, T + n).expand(B, n), *cross, *past)
        torch.onnx.export(_DecoderStep(model), args, str(out / "decoder.onnx"), dynamo=False, opset_version=opset,
                          custom_opsets={"com.microsoft": 1},
                          input_names=["enc", "attention_mask", "ptr_keys", "prev_action", "kind", "step",
                                       *cross_names, *past_names],
                          output_names=["logits", *new_names], dynamic_axes=dynamic)


def write_meta(model, out: Path, source: str, **extra) -> None:
    """``needle.json``: what the engine needs to know about the graphs, and the initializer maps
    that rebuild the PyTorch model from them (`training.onnx_weights`)."""
    from training.onnx_weights import initializer_map

    cfg = model.config
    meta = {"format": MODEL_FORMAT, "d_model": cfg.d_model, "decoder_layers": cfg.decoder_layers,
            "decoder_heads": cfg.decoder_heads, "max_steps": cfg.max_steps, "precision": "fp32",
            "source_checkpoint": source, "config": cfg.to_dict(),
            "decoder_params": initializer_map(model, out / "decoder.onnx", encoder_graph=False), **extra}
    if (out / "encoder.onnx").exists():  # finetune exports the decoder alone
        meta["encoder_params"] = initializer_map(model, out / "encoder.onnx", encoder_graph=True)
    (out / "needle.json").write_text(json.dumps(meta, indent=1))


# Per graph, what each precision stores. int8 is dynamic quantization with one int8 scale per
# weight column (per-tensor weight scales moved 10% of the calls of 400 training-source requests
# away from fp32's; per column: 6%); ONNX Runtime runs it with the CPU's int8 matrix units
# (AMX/VNNI), so the encoder runs ~2.5x faster than at int4, whose 4-bit kernels are slower than
# fp32 here. The decoder's one-row steps are bound by reading weights, where 4 bits win.
# ``mixed`` takes the faster kind for each graph (README, "Precision").
PRECISIONS = {"fp32": {"encoder.onnx": "fp32", "decoder.onnx": "fp32"},
              "int8": {"encoder.onnx": "int8", "decoder.onnx": "int8"},
              "int4": {"encoder.onnx": "int4", "decoder.onnx": "int4"},
              "mixed": {"encoder.onnx": "int8", "decoder.onnx": "int4"}}
DEFAULT_PRECISION = "mixed"


def quantize(src_dir: str, dst_dir: str, precision: str, graphs=("encoder.onnx", "decoder.onnx")) -> Path:
    """Write ``graphs`` of an fp32 export at ``precision`` (`PRECISIONS`): int8 = dynamic int8
    MatMuls and embeddings, weights per column; int4 = weight-only 4-bit MatMuls (MatMulNBits,
    blocks of 32) with int8 embeddings."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r} ({', '.join(PRECISIONS)})")
    src, dst = Path(src_dir), Path(dst_dir)
    dst.mkdir(parents=True, exist_ok=True)
    for name in graphs:
        quantize_graph(src / name, dst / name, PRECISIONS[precision][name])
    meta = json.loads((src / "needle.json").read_text())
    meta["precision"] = precision
    (dst / "needle.json").write_text(json.dumps(meta, indent=1))
    if all((dst / name).exists() for name in MODEL_FILES):
        write_manifest(dst)  # a partial quantization (finetune's decoder) is completed by its caller
    return dst


def quantize_graph(src: Path, dst: Path, kind: str) -> None:
    """One ONNX graph at ``kind`` (fp32, int8 or int4)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if kind == "fp32":
        shutil.copy(src, dst)
    elif kind == "int8":
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True)
        unsigned_int8_weights(dst)
    elif kind == "int4":
        import onnx
        from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

        gathered = dst.with_name(f"_gather_{dst.name}")  # embeddings (Gather) as int8 first
        quantize_dynamic(str(src), str(gathered), weight_type=QuantType.QInt8, op_types_to_quantize=["Gather"])
        qcfg = DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=True, accuracy_level=4)
        quant = MatMulNBitsQuantizer(onnx.load(str(gathered)), algo_config=qcfg)
        quant.process()
        quant.model.save_model_to_file(str(dst), False)
        gathered.unlink()
    else:
        raise ValueError(f"unknown graph precision {kind!r}")


def unsigned_int8_weights(path: str | Path) -> int:
    """Rewrite an int8 graph's signed MatMulInteger weights in place as uint8 with their zero point
    moved by +128: the same integers, so the same products, on every CPU. Why: ONNX Runtime's u8 x s8
    kernel for x86 CPUs without VNNI/AMX (AVX2's vpmaddubsw) saturates the 16-bit sum of two
    products, while u8 x u8 is exact everywhere. On a 2-core AMD EPYC (AVX2 only) the signed encoder's
    states were off by up to 0.49 (mean |state| 0.43) and 604 of the 3,475 BFCL answers differed
    from the unsigned one's, which equals an exact float reference (README, "Precision"). Models
    ship in this form; the engine turns them back to signed at load time on CPUs whose u8 x s8
    products are exact, where that path is faster (`needle_core.int8_kernels`). Returns the number
    of weights rewritten."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    initializers = {init.name: init for init in model.graph.initializer}
    rewritten = 0

    def shift(name: str) -> None:  # int8 -> uint8 by +128, once per initializer (they may be shared)
        init = initializers[name]
        if init.data_type == onnx.TensorProto.INT8:
            shifted = (numpy_helper.to_array(init).astype(np.int16) + 128).astype(np.uint8)
            init.CopyFrom(numpy_helper.from_array(shifted, name))

    for node in model.graph.node:
        weight = initializers.get(node.input[1]) if node.op_type == "MatMulInteger" else None
        if weight is None or weight.data_type != onnx.TensorProto.INT8:
            continue
        zero_name = node.input[3] if len(node.input) > 3 else ""
        if not zero_name:  # absent = 0, which becomes 128
            zero_name = f"{weight.name}_zero_point_signed"
            model.graph.initializer.append(numpy_helper.from_array(np.array(0, np.int8), zero_name))
            initializers[zero_name] = model.graph.initializer[-1]
            node.input.extend([""] * (3 - len(node.input)) + [zero_name])
        shift(weight.name)
        shift(zero_name)
        rewritten += 1
    onnx.save(model, str(path))
    return rewritten


def agreement_with_fp32(fp32_dir: str | Path, quantized_dir: str | Path, data_paths: list[str], n: int = 400,
                        seed: int = 7) -> dict:
    """Share of ``n`` requests (shuffled with ``seed``) on which the quantized model makes exactly
    the fp32 model's calls: how far quantization moves decisions, without any benchmark data."""
    import random

    from tqdm.auto import tqdm

    from needle_core.api import Needle
    from training.calibrate import predict, same_calls
    from training.data import read_jsonl

    examples = [ex for p in data_paths for ex in read_jsonl(p)]
    random.Random(seed).shuffle(examples)
    examples = examples[:n]
    if not examples:
        raise ValueError(f"no requests in {', '.join(map(str, data_paths))}")
    answers = []
    for model_dir in (fp32_dir, quantized_dir):
        needle = Needle(model_dir, threads=1)
        answers.append([predict(needle, ex)[1] for ex in tqdm(examples, desc=f"agreement: {Path(model_dir).name}",
                                                              mininterval=2)])
    same = sum(same_calls(a, b) for a, b in zip(*answers))
    return {"requests": len(examples), "agreement": same / len(examples)}


def write_manifest(model_dir: str | Path) -> None:
    """``manifest.json``: SHA-256 and size of every model file, checked by the engine at load."""
    model_dir = Path(model_dir)
    files = {}
    for name in MODEL_FILES:
        path = model_dir / name
        files[name] = {"sha256": file_sha256(path), "bytes": path.stat().st_size}
    (model_dir / "manifest.json").write_text(json.dumps({"files": files}, indent=1))


def add_arguments(parser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint folder written by needle train")
    parser.add_argument("--out", required=True, help="folder for the ONNX model")
    parser.add_argument("--precision", choices=list(PRECISIONS), default=DEFAULT_PRECISION,
                        help="mixed (default): int8 encoder, int4 decoder; see README, Precision")
    parser.add_argument("--agreement", nargs="+", metavar="JSONL",
                        help="also report how often the quantized model makes exactly fp32's calls on requests "
                             "from these canonical files (training sources, never BFCL)")
    parser.add_argument("--agreement-n", type=int, default=400, help="requests for --agreement (default 400)")


def run(args) -> int:
    fp32_dir = Path(args.out) / "_fp32" if args.precision != "fp32" else Path(args.out)
    export_onnx(args.checkpoint, str(fp32_dir))
    if args.precision == "fp32":
        write_manifest(fp32_dir)
    else:
        quantize(str(fp32_dir), args.out, args.precision)
        if args.agreement:
            write_manifest(fp32_dir)
            report = agreement_with_fp32(fp32_dir, args.out, args.agreement, n=args.agreement_n)
            print(f"{args.precision} makes fp32's calls on {report['agreement']:.1%} of {report['requests']} requests")
        shutil.rmtree(fp32_dir)
    print(f"wrote {args.precision} model to {args.out}")
    return 0
