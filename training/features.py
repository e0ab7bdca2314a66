"""Canonical examples -> model features (token ids, position types, target actions, step kinds).

The same `Renderer` and `CallDecoder` the engine uses build the targets, so training sees
exactly the input and the action sequence that constrained decoding will produce. Features are
stored as ragged arrays in one compressed ``.npz`` (no pickles) so a run can be moved to another
machine in a few megabytes.
"""
from __future__ import annotations

import json
import os
import re
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from multiprocessing import get_context

import numpy as np
from tqdm.auto import tqdm

from needle_core.callformat import Renderer
from needle_core.decoding import CallDecoder, DecodeError, encode_calls
from needle_core.messages import normalize_messages
from training.data import example_specs


def featurize(example: dict, renderer: Renderer, stats: Counter) -> dict | None:
    """One example -> arrays, or None (counted in ``stats`` by reason) when it cannot be encoded."""
    tools = example["tools"]
    specs = example_specs({"tools": json.loads(tools) if isinstance(tools, str) else tools})
    messages = example["messages"]
    messages = normalize_messages(json.loads(messages) if isinstance(messages, str) else messages)
    calls = example["calls"]
    calls = json.loads(calls) if isinstance(calls, str) else calls
    rendered = renderer.render(messages, specs)
    if len(rendered.kept_tools) < len(specs):
        stats["skipped: tools do not fit 512 positions"] += 1
        return None
    decoder = CallDecoder(rendered, specs)
    unsure: list[int] = []
    try:
        actions, kinds = encode_calls(decoder, calls, stats, unsure)
    except DecodeError as exc:
        reason = re.sub(r"'[^']*'", "…", str(exc).split(":")[0])  # one count per reason, not per name
        stats[f"skipped: {reason}"] += 1
        return None
    stats["kept"] += 1
    stats["untrained steps (a left-out argument)"] += len(unsure)
    trained = np.ones(len(actions), np.uint8)
    trained[unsure] = 0
    return {"ids": np.asarray(rendered.ids, np.uint16), "pos_type": np.asarray(rendered.pos_type, np.uint8),
            "actions": np.asarray(actions, np.int16), "kinds": np.asarray(kinds, np.uint8), "trained": trained}


FEATURIZE_CHUNK = 256  # examples per task handed to a worker process
_worker_renderer: Renderer | None = None


def _start_worker(max_len: int) -> None:
    global _worker_renderer
    _worker_renderer = Renderer(max_len=max_len)


def _featurize_chunk(chunk: list[dict], renderer: Renderer | None = None) -> tuple[list[dict | None], Counter]:
    """One chunk's rows (None where unusable) and counts; in a worker, with its own renderer."""
    stats: Counter = Counter()
    return [featurize(ex, renderer or _worker_renderer, stats) for ex in chunk], stats


def featurize_all(examples, max_len: int = 512, progress: bool = True, workers: int = 1) -> tuple[dict, Counter]:
    """Featurize many examples, in their order, on ``workers`` processes (0: one per CPU).

    Rendering and encoding the targets is pure Python, one example at a time: 80,000 augmented rows
    took 31 minutes on one core. Workers are spawned (not forked: the caller may hold torch's
    threads), so a script that asks for several must guard its entry point with
    ``if __name__ == "__main__":``; they get chunks of `FEATURIZE_CHUNK` examples."""
    examples = list(examples)
    chunks = [examples[i:i + FEATURIZE_CHUNK] for i in range(0, len(examples), FEATURIZE_CHUNK)]
    workers = min(workers or os.cpu_count() or 1, len(chunks))
    stats: Counter = Counter()
    rows = []
    with tqdm(total=len(examples), desc="featurize", disable=not progress, mininterval=2) as bar, \
            ExitStack() as stack:
        if workers > 1:
            pool = stack.enter_context(ProcessPoolExecutor(workers, mp_context=get_context("spawn"),
                                                           initializer=_start_worker, initargs=(max_len,)))
            results = pool.map(_featurize_chunk, chunks)
        else:  # in this process: no module state touched
            renderer = Renderer(max_len=max_len)
            results = (_featurize_chunk(chunk, renderer) for chunk in chunks)
        for chunk_rows, chunk_stats in results:
            rows.extend(r for r in chunk_rows if r is not None)
            stats.update(chunk_stats)
            bar.update(len(chunk_rows))
    return pack(rows), stats


ROW_KEYS = ("ids", "pos_type", "actions", "kinds", "trained")  # "trained": 0 where a step is not learned from


def _row_keys(keys) -> list[str]:
    """The ragged keys present (features written before "trained" existed lack it)."""
    return [k for k in ROW_KEYS if k in keys]


def pack(rows: list[dict]) -> dict:
    """Ragged rows -> flat arrays + offsets."""
    out = {}
    for key in _row_keys(rows[0]) if rows else ROW_KEYS[:4]:
        lengths = np.array([len(r[key]) for r in rows], dtype=np.int64)
        out[key] = np.concatenate([r[key] for r in rows]) if rows else np.zeros(0)
        out[key + "_off"] = np.concatenate([[0], np.cumsum(lengths)])
    return out


def concat(packed_sets: list[dict]) -> dict:
    """Packed features one after another (no unpacking into rows)."""
    out = {}
    for key in _row_keys(set.intersection(*(set(p) for p in packed_sets))):
        out[key] = np.concatenate([p[key] for p in packed_sets])
        starts = np.cumsum([0] + [p[key + "_off"][-1] for p in packed_sets[:-1]])
        out[key + "_off"] = np.concatenate([packed_sets[0][key + "_off"][:1]] +
                                           [p[key + "_off"][1:] + start for p, start in zip(packed_sets, starts)])
    return out


def save_features(path: str, packed: dict) -> None:
    np.savez_compressed(path, **packed)


@dataclass
class FeatureSet:
    """Random access over packed features."""

    arrays: dict

    @classmethod
    def load(cls, path: str) -> "FeatureSet":
        with np.load(path, allow_pickle=False) as z:
            return cls({k: z[k] for k in z.files})

    def __len__(self) -> int:
        return len(self.arrays["ids_off"]) - 1

    def row(self, i: int) -> dict:
        a = self.arrays
        return {k: a[k][a[k + "_off"][i]: a[k + "_off"][i + 1]] for k in _row_keys(a)}

    def lengths(self) -> np.ndarray:
        return np.diff(self.arrays["ids_off"])

    def subset(self, index) -> "FeatureSet":
        return FeatureSet(pack([self.row(int(i)) for i in index]))
