"""The ONNX Runtime engine: encode once, then constrained greedy decoding with a KV cache.

Torch-free: numpy, onnxruntime and tokenizers only. Model folders hold ``encoder.onnx``,
``decoder.onnx``, ``needle.json`` and ``manifest.json`` (SHA-256 of each file, checked before
anything is loaded, so a corrupted or tampered file fails with a clear error). ONNX files are
protobuf: loading them never unpickles. int8 weights run in the form this CPU multiplies exactly
and fastest (`needle_core.int8_kernels`).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from needle_core.callformat import pad_ids
from needle_core.decoding import CallDecoder, decoder_inputs, greedy_decode_batch
from needle_core.errors import ModelFileError
from needle_core.int8_kernels import graph_for_this_cpu

REQUIRED_FILES = ("encoder.onnx", "decoder.onnx", "needle.json", "manifest.json")
# /2: the decoder graph takes [B, n] steps (forced actions fed in bulk); /3: one K/V input and output
# per decoder layer (no stacked cache split apart each step), fused attention in the encoder
MODEL_FORMAT = "needle-onnx/3"


def cache_names(prefix: str, layers: int) -> list[str]:
    """Graph input/output names of a per-layer K/V cache, keys first: ``cross_k.0``, ``cross_k.1``,
    ..., ``cross_v.0``, ``cross_v.1``, ... (the order the graphs take and return them in)."""
    return [f"{prefix}_{kv}.{i}" for kv in "kv" for i in range(layers)]


def file_sha256(path: Path) -> str:
    """A model file's SHA-256 as ``manifest.json`` records it (written by `training.export.write_manifest`,
    checked here). Hashed in 1 MB blocks: a whole-file copy of the encoder, freed, would raise glibc's
    mmap threshold and leave the sessions' load buffers resident (see `graph_for_this_cpu`)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_model_dir(model_dir: Path) -> dict:
    """Check that every file is present and matches the manifest; return ``needle.json``."""
    if not model_dir.is_dir():
        raise ModelFileError(f"model folder {model_dir} does not exist")
    missing = [f for f in REQUIRED_FILES if not (model_dir / f).is_file()]
    if missing:
        raise ModelFileError(f"model folder {model_dir} lacks {', '.join(missing)}")
    try:
        manifest = json.loads((model_dir / "manifest.json").read_text())
        files = manifest["files"]
    except (ValueError, KeyError) as exc:
        raise ModelFileError(f"{model_dir / 'manifest.json'} is not a valid manifest: {exc}") from None
    for name, entry in files.items():
        digest = file_sha256(model_dir / name)
        if digest != entry.get("sha256"):
            raise ModelFileError(f"{model_dir / name} does not match its SHA-256 in manifest.json "
                                 f"(corrupted or modified): expected {entry.get('sha256')}, got {digest}")
    for name in ("encoder.onnx", "decoder.onnx", "needle.json"):
        if name not in files:
            raise ModelFileError(f"manifest.json does not cover {name}")
    return json.loads((model_dir / "needle.json").read_text())


DECODER_THREADS = 1


def _session(path: Path, threads: int, signed_int8: bool | None = None):
    """An ONNX Runtime CPU session on ``threads`` intra-op threads, all graph optimisations on, with
    int8 weights in the form this CPU multiplies exactly and fastest; returns (session, that form)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    graph, form = graph_for_this_cpu(path, signed_int8)
    if graph is None:  # as stored: onnxruntime reads the file itself
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]), form
    session = ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])
    # onnxruntime's Python wrapper keeps the model bytes for as long as the session lives (its own
    # comment: "holding the memory indefinitely"), only to rebuild the session on a provider
    # fallback, which a CPU-only session never takes.
    if getattr(session, "_model_bytes", None) is not None:
        session._model_bytes = None
    return session, form


class OnnxEngine:
    """Runs the two exported graphs. Safe to share between threads (sessions are thread-safe).

    ``signed_int8``: run int8 weights as u8 x s8 (True) or u8 x u8 (False); None picks the form
    this CPU multiplies exactly and fastest (`needle_core.int8_kernels`)."""

    def __init__(self, model_dir: str | Path, threads: int | None = None, signed_int8: bool | None = None):
        self.model_dir = Path(model_dir)
        self.meta = verify_model_dir(self.model_dir)
        if self.meta.get("format") != MODEL_FORMAT:
            raise ModelFileError(f"{self.model_dir} holds format {self.meta.get('format')!r}; this engine runs "
                                 f"{MODEL_FORMAT!r} (re-export the checkpoint with `needle export`)")
        self.encoder, encoder_form = _session(self.model_dir / "encoder.onnx", threads or min(os.cpu_count() or 1, 4),
                                              signed_int8)
        # The decoder runs one step of a few small matrices per action: waking a thread pool for
        # each of its ~140 nodes costs more than it saves. With 2 threads for both graphs, a
        # BFCL simple call took 45 ms (median, 2-core VM) against 21-24 ms with the decoder on 1.
        self.decoder, decoder_form = _session(self.model_dir / "decoder.onnx", DECODER_THREADS, signed_int8)
        self.int8_form = encoder_form or decoder_form  # "u8 x s8", "u8 x u8", or "" (no int8 MatMuls)
        self.layers, self.heads = self.meta["decoder_layers"], self.meta["decoder_heads"]
        self.dh = self.meta["d_model"] // self.heads

    def encode(self, id_lists: list[list[int]]) -> dict:
        """Encoder states, pointer keys and per-layer cross-attention keys/values (lists).

        The rows of one call share the int8 MatMuls' activation scales (one per input matrix), so
        a row's states depend on the other rows: `Needle` and `embed` pass one row at a time."""
        ids, mask = pad_ids(id_lists)
        enc, *cross, ptr_keys = self.encoder.run(None, {"input_ids": ids, "attention_mask": mask})
        return {"enc": enc, "attention_mask": mask, "cross_k": cross[:self.layers], "cross_v": cross[self.layers:],
                "ptr_keys": ptr_keys}

    def embed(self, id_lists: list[list[int]]) -> np.ndarray:
        """Mean-pooled, normalised encoder states, one text per run: the model's own embeddings,
        for tool retrieval. One at a time so that a tool's embedding (cached by `Needle`) does not
        depend on which tools were embedded beside it: in batches of 64 it did, by up to 0.035,
        for 3.0 s per 1,000 tool texts against 3.4 s one by one (`runs/s21/embed_time.py`)."""
        vecs = np.stack([self.encode([ids])["enc"][0].mean(0) for ids in id_lists]) if id_lists else \
            np.zeros((0, self.meta["d_model"]), np.float32)
        return vecs / np.maximum(np.linalg.norm(vecs, axis=-1, keepdims=True), 1e-9)

    def decode(self, decoders: list[CallDecoder], encoded: dict, max_steps: int = 256):
        """Constrained greedy decoding of a batch; returns [(calls, logprob, steps)]."""
        B = len(decoders)
        feed = {k: encoded[k] for k in ("enc", "attention_mask", "ptr_keys")}
        feed.update(zip(cache_names("cross", self.layers), encoded["cross_k"] + encoded["cross_v"]))
        past_names = cache_names("past", self.layers)
        feed.update(dict.fromkeys(past_names, np.zeros((B, self.heads, 0, self.dh), np.float32)))

        def step_fn(prev_actions: np.ndarray, kinds: np.ndarray) -> np.ndarray:
            t, n = feed["past_k.0"].shape[2], prev_actions.shape[1]
            feed.update(prev_action=decoder_inputs(prev_actions).astype(np.int64), kind=kinds.astype(np.int64),
                        step=np.repeat(np.arange(t, t + n, dtype=np.int64)[None], B, axis=0))
            logits, *caches = self.decoder.run(None, feed)
            feed.update(zip(past_names, caches))
            return logits

        return greedy_decode_batch(decoders, step_fn, max_steps=max_steps)
