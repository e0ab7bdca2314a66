"""`needle finetune`: teach the bundled model your own tools, in minutes on a CPU.

The shipped model is ONNX only, so fine-tuning keeps its encoder graph as it is (run by ONNX
Runtime to encode each example) and trains the PyTorch decoder, rebuilt from the shipped decoder
graph (`training.onnx_weights.model_from_onnx`). The decoder weights the encoder
graph also computes with (cross-attention keys/values, pointer keys) stay frozen, so the old
encoder graph and the new decoder graph fit together. The result is a complete model folder
(re-quantized decoder, hashes in the manifest) that `Needle(model_dir)` loads.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from needle_core.engine import OnnxEngine
from training.onnx_weights import in_encoder_graph, model_from_onnx


def _encoded_batch(engine: OnnxEngine, rows: list[dict]) -> dict[str, torch.Tensor]:
    from training.train import collate

    batch = collate(rows)
    enc = engine.encode([list(map(int, r["ids"])) for r in rows])
    out = {k: torch.from_numpy(np.asarray(enc[k])) for k in ("enc", "cross_k", "cross_v", "ptr_keys")}
    out["attention_mask"] = torch.from_numpy(enc["attention_mask"])
    return {**batch, **out}


def finetune(data_paths: list[str], out_dir: str, base_dir: str | None = None, epochs: int = 3, lr: float = 2e-4,
             batch_size: int = 16, seed: int = 0) -> dict:
    from needle_core.api import bundled_model_dir
    from training.data import read_jsonl
    from training.export import export_decoder, quantize, write_manifest, write_meta
    from training.features import featurize_all

    torch.manual_seed(seed)
    base = Path(base_dir) if base_dir else bundled_model_dir()
    engine = OnnxEngine(base)
    model = model_from_onnx(base, decoder_only=True)
    examples = [ex for p in data_paths for ex in read_jsonl(p)]
    packed, stats = featurize_all(examples)
    from training.features import FeatureSet

    data = FeatureSet(packed)
    if len(data) == 0:
        raise ValueError(f"none of the {len(examples)} examples could be encoded: {dict(stats)}")
    trainable = [p for n, p in model.named_parameters() if not in_encoder_graph(n)]
    model.requires_grad_(False)
    for p in trainable:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.01)
    rng = np.random.default_rng(seed)
    model.train()
    history, t0 = [], time.time()
    from training.train import TrainConfig, bucketed_batches

    epoch_batches = [bucketed_batches(data.lengths(), TrainConfig(batch_size=batch_size), rng) for _ in range(epochs)]
    total = sum(len(e) for e in epoch_batches)
    # linear decay to a tenth of ``lr``: a long continuation ends gently, a short one hardly notices
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - 0.9 * step / max(total, 1))
    bar = tqdm(total=total, desc="finetune")
    for epoch, groups in enumerate(epoch_batches):
        for group in groups:
            b = _encoded_batch(engine, [data.row(int(i)) for i in group])
            cross = list(zip(b["cross_k"], b["cross_v"]))
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model.decode_actions(b["enc"], cross, b["ptr_keys"], b["attention_mask"], b["prev_actions"],
                                           b["kinds"], b["labels"], b["pos_type"])
            out["loss"].backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            history.append(float(out["loss"].detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(history[-10:]):.3f}", epoch=epoch + 1)
    bar.close()
    model.eval()
    out = Path(out_dir)
    tmp = out / "_fp32"
    export_decoder(model, tmp)
    write_meta(model, tmp, source=f"finetune of {base.name}")
    precision = engine.meta.get("precision", "int8")
    if precision == "fp32":
        shutil.copy(tmp / "decoder.onnx", out / "decoder.onnx")
    else:
        quantize(str(tmp), str(out), precision, graphs=("decoder.onnx",))
    shutil.copy(base / "encoder.onnx", out / "encoder.onnx")
    meta = json.loads((tmp / "needle.json").read_text())
    meta.update(precision=precision, name=f"{engine.meta.get('name', base.name)}-ft")
    if "encoder_params" in engine.meta:  # the encoder graph is the base's
        meta["encoder_params"] = engine.meta["encoder_params"]
    (out / "needle.json").write_text(json.dumps(meta, indent=1))
    write_manifest(out)
    shutil.rmtree(tmp)
    report = {"examples": len(examples), "encoded": len(data), "skipped": {k: v for k, v in stats.items() if k.startswith("skipped")},
              "epochs": epochs, "steps": len(history), "first_loss": history[0], "last_loss": float(np.mean(history[-5:])),
              "minutes": (time.time() - t0) / 60, "out": str(out)}
    (out / "finetune_report.json").write_text(json.dumps(report, indent=1))
    return report


def add_arguments(parser) -> None:
    parser.add_argument("data", nargs="+", help="canonical JSONL files with examples of your tools")
    parser.add_argument("--out", required=True, help="folder for the fine-tuned model")
    parser.add_argument("--base", default=None, help="model folder to start from (default: the bundled model)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--batch-size", type=int, default=16)


def run(args) -> int:
    report = finetune(args.data, args.out, args.base, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size)
    print(json.dumps(report, indent=1))
    return 0
