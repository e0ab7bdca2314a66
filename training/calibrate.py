"""`needle calibrate`: make ``confidence`` mean "probability the decision is right".

The engine's raw signal is the log-probability of the decoded action sequence. A one-feature
logistic model (Platt scaling) maps it to the probability that the whole result (tools and
arguments) is exactly right, fitted on examples from the training sources and written into the
model's ``needle.json`` (hashes refreshed). The expected calibration error (ECE, 10 equal-width
bins) is reported on a disjoint split, before and after, with a reliability diagram.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm


def same_calls(predicted: list, gold: list) -> bool:
    """Exact match, order-insensitive: what a caller acting on the result needs."""
    def key(calls):
        return sorted(json.dumps([c["name"], c["arguments"]], sort_keys=True, ensure_ascii=False) for c in calls)
    return key(predicted) == key(gold)


def predict(needle, example: dict):
    """The model's result for a canonical example, and its calls as ``{"name", "arguments"}`` dicts."""
    result = needle.call(example["messages"], example["tools"])
    return result, [{"name": c.name, "arguments": c.arguments} for c in result.calls]


def collect(needle, examples: list[dict], desc: str = "calibration set",
            progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(log-probability, correct?) per example."""
    logps, correct = [], []
    for ex in tqdm(examples, desc=desc, disable=not progress, mininterval=2):
        result, predicted = predict(needle, ex)
        logps.append(result.logprob)
        correct.append(same_calls(predicted, ex["calls"]))
    return np.array(logps), np.array(correct, dtype=float)


def fit_platt(logps: np.ndarray, correct: np.ndarray, steps: int = 500) -> tuple[float, float]:
    """Logistic regression p = sigmoid(a * logp + b) by Newton's method (two parameters)."""
    a, b = 1.0, 0.0
    x = np.clip(logps, -50, 0)
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(a * x + b)))
        g = np.array([np.sum((p - correct) * x), np.sum(p - correct)])
        w = p * (1 - p) + 1e-9
        h = np.array([[np.sum(w * x * x), np.sum(w * x)], [np.sum(w * x), np.sum(w)]]) + 1e-6 * np.eye(2)
        da, db = np.linalg.solve(h, g)
        a, b = a - da, b - db
        if abs(da) + abs(db) < 1e-9:
            break
    return float(a), float(b)


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        sel = idx == b
        if sel.any():
            ece += sel.mean() * abs(confidence[sel].mean() - correct[sel].mean())
    return float(ece)


def plot_reliability(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, bins: int = 10) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect")
    edges = np.linspace(0, 1, bins + 1)
    for label, (conf, correct) in curves.items():
        idx = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
        xs = [conf[idx == b].mean() for b in range(bins) if (idx == b).any()]
        ys = [correct[idx == b].mean() for b in range(bins) if (idx == b).any()]
        ax.plot(xs, ys, "o-", label=f"{label} (ECE {expected_calibration_error(conf, correct):.3f})")
    ax.set_xlabel("confidence"); ax.set_ylabel("share exactly right"); ax.set_title("Needle confidence calibration")
    ax.legend(fontsize=8); ax.grid(alpha=0.3)
    fig.tight_layout(); fig.savefig(path, dpi=110); plt.close(fig)


def calibrate(model_dir: str, data_paths: list[str], out_dir: str, limit: int = 600) -> dict:
    from needle_core import Needle
    from training.data import read_jsonl, split_by_request
    from training.export import write_manifest

    examples = [ex for p in data_paths for ex in read_jsonl(p)]
    rng = np.random.default_rng(0)
    examples = [examples[i] for i in rng.permutation(len(examples))[: 2 * limit]]
    report_set, fit_set = split_by_request(examples, 0.5, salt="calibration")
    needle = Needle(model_dir)
    raw_fit, ok_fit = collect(needle, fit_set)
    raw_rep, ok_rep = collect(needle, report_set)
    a, b = fit_platt(raw_fit, ok_fit)
    before = np.exp(np.clip(raw_rep, -50, 0))
    after = 1 / (1 + np.exp(-(a * np.clip(raw_rep, -50, 0) + b)))
    meta_path = Path(model_dir) / "needle.json"
    meta = json.loads(meta_path.read_text())
    meta["calibration"] = {"method": "platt on sequence log-probability", "a": a, "b": b,
                           "fit_examples": len(fit_set), "ece_before": expected_calibration_error(before, ok_rep),
                           "ece_after": expected_calibration_error(after, ok_rep), "report_examples": len(report_set),
                           "accuracy_report_set": float(ok_rep.mean())}
    meta_path.write_text(json.dumps(meta, indent=1))
    write_manifest(model_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot_reliability({"raw sequence probability": (before, ok_rep), "calibrated": (after, ok_rep)},
                     out / "calibration.png")
    (out / "calibration.json").write_text(json.dumps(meta["calibration"], indent=1))
    return meta["calibration"]


def add_arguments(parser) -> None:
    parser.add_argument("data", nargs="+", help="canonical JSONL (training sources, never BFCL)")
    parser.add_argument("--model", required=True, help="model folder to calibrate (needle.json is updated)")
    parser.add_argument("--out", default="runs/calibration")
    parser.add_argument("--limit", type=int, default=600, help="examples for fitting (as many again for the report)")


def run(args) -> int:
    print(json.dumps(calibrate(args.model, args.data, args.out, args.limit), indent=1))
    return 0
