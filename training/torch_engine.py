"""The PyTorch inference path, with the same interface as `needle_core.engine.OnnxEngine`.

`TorchEngine` runs a saved `NeedleForToolCalling` in fp32 (a checkpoint, or a model folder's
graphs rebuilt by `training.onnx_weights.load_student`): the encoder once per
request (``model.encode``), then one ``model.decode_step`` per action with a self-attention KV
cache, driven by the very same `CallDecoder` state machine and `greedy_decode_batch` loop as the
ONNX engine. ``encode`` returns the same dict of numpy arrays as ``OnnxEngine.encode``, so the
two engines are interchangeable: ``needle bench --torch-checkpoint`` times it against ONNX, and
the export parity tests compare the two call for call (`decision_agreement`) and logit for logit
(`step_fn` with a ``trace`` list).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from needle_core.callformat import pad_ids
from needle_core.decoding import CallDecoder, decoder_inputs, greedy_decode_batch


class TorchEngine:
    """fp32 PyTorch inference over a checkpoint folder (``save_pretrained`` layout) or a model folder."""

    def __init__(self, checkpoint: str | Path, threads: int | None = 1):
        from training.onnx_weights import load_student

        if threads:
            torch.set_num_threads(threads)  # process-wide: that is how torch works
        self.checkpoint = Path(checkpoint)
        self.model = load_student(self.checkpoint).eval()
        cfg = self.model.config
        self.layers, self.heads = cfg.decoder_layers, cfg.decoder_heads
        self.dh = cfg.d_model // self.heads
        self.meta = {"format": "needle-torch", "d_model": cfg.d_model, "decoder_layers": self.layers,
                     "decoder_heads": self.heads, "max_steps": cfg.max_steps, "precision": "fp32",
                     "name": self.checkpoint.name}

    @torch.inference_mode()
    def encode(self, id_lists: list[list[int]]) -> dict:
        """Same padding and outputs as ``OnnxEngine.encode`` (numpy arrays)."""
        ids, mask = pad_ids(id_lists)
        enc, cross, ptr_keys = self.model.encode(torch.from_numpy(ids), torch.from_numpy(mask))
        return {"enc": enc.numpy(), "attention_mask": mask, "cross_k": [k.numpy() for k, _ in cross],
                "cross_v": [v.numpy() for _, v in cross], "ptr_keys": ptr_keys.numpy()}

    def embed(self, id_lists: list[list[int]]) -> np.ndarray:
        """Mean-pooled, normalised encoder states (as ``OnnxEngine.embed``, for tool ranking)."""
        out = self.encode(id_lists)
        m = out["attention_mask"][..., None].astype(np.float32)
        vec = (out["enc"] * m).sum(1) / np.maximum(m.sum(1), 1)
        return vec / np.maximum(np.linalg.norm(vec, axis=-1, keepdims=True), 1e-9)

    def step_fn(self, encoded: dict, batch: int, trace: list | None = None) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        """A `greedy_decode_batch` step function with its own KV cache; ``trace`` collects the logits."""
        t = {name: torch.from_numpy(np.ascontiguousarray(encoded[name])) for name in ("enc", "attention_mask", "ptr_keys")}
        for name in ("cross_k", "cross_v"):
            t[name] = [torch.from_numpy(np.ascontiguousarray(layer)) for layer in encoded[name]]
        cross_mask = t["attention_mask"].bool()[:, None, None, :]
        empty = [torch.zeros(batch, self.heads, 0, self.dh)] * self.layers
        state = {"past_k": empty, "past_v": empty, "t": 0}

        @torch.inference_mode()
        def step(prev_actions: np.ndarray, kinds: np.ndarray) -> np.ndarray:
            prev_in = torch.from_numpy(decoder_inputs(prev_actions).astype(np.int64))
            n = prev_actions.shape[1]
            steps = torch.arange(state["t"], state["t"] + n).expand(batch, n)
            logits, state["past_k"], state["past_v"] = self.model.decode_step(
                t["enc"], cross_mask, t["cross_k"], t["cross_v"], t["ptr_keys"], t["attention_mask"], prev_in,
                torch.from_numpy(kinds.astype(np.int64)), steps, state["past_k"], state["past_v"])
            state["t"] += n
            out = logits.numpy()
            if trace is not None:
                trace.append(out.copy())
            return out

        return step

    def decode(self, decoders: list[CallDecoder], encoded: dict, max_steps: int = 256):
        """Constrained greedy decoding of a batch; returns [(calls, logprob, steps)] like the ONNX engine."""
        return greedy_decode_batch(decoders, self.step_fn(encoded, len(decoders)), max_steps=max_steps)


def decision_agreement(reference, candidate, rendered: list, specs: list, tool_choice: str = "auto",
                       max_steps: int = 256) -> float:
    """Fraction of requests on which two engines make the same calls (names and arguments).

    ``reference`` and ``candidate`` are engines with ``encode``/``decode`` (`OnnxEngine`,
    `TorchEngine`); ``rendered`` are `Rendered` requests over ``specs``. Used to report how far
    quantization moves the decisions of the fp32 model.
    """
    if not rendered:
        raise ValueError("no requests to compare")
    ids = [r.ids for r in rendered]
    outs = []
    for engine in (reference, candidate):
        decoders = [CallDecoder(r, specs, tool_choice=tool_choice) for r in rendered]
        outs.append([calls for calls, _, _ in engine.decode(decoders, engine.encode(ids), max_steps=max_steps)])
    return sum(a == b for a, b in zip(*outs)) / len(rendered)
