"""Export parity: a tiny random `NeedleForToolCalling`, exported to ONNX, decides exactly as PyTorch.

The model is randomly initialised (2 encoder layers, d=64; the real 30522-id vocabulary because
inputs come from the real tokenizer), so its calls are arbitrary but deterministic: what matters
is that the ONNX engine and the PyTorch path (`training.torch_engine.TorchEngine`) make the same
ones, with the same logits. Also: int8 quantization runs and reports its agreement with fp32, and
the manifest makes the engine refuse a tampered or missing file.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("onnx")

from needle_core.callformat import Renderer  # noqa: E402
from needle_core.decoding import CallDecoder  # noqa: E402
from needle_core.engine import OnnxEngine  # noqa: E402
from needle_core.errors import ModelFileError  # noqa: E402
from needle_core.schema import to_tool_specs  # noqa: E402

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Get the current weather for a city.",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "description": "city name"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city"]}}},
    {"type": "function", "function": {
        "name": "send_email", "description": "Send an email message.",
        "parameters": {"type": "object", "properties": {
            "to": {"type": "string"}, "subject": {"type": "string"}, "body": {"type": "string"}},
            "required": ["to", "body"]}}},
    {"type": "function", "function": {
        "name": "set_timer", "description": "Start a countdown timer.",
        "parameters": {"type": "object", "properties": {
            "minutes": {"type": "integer", "minimum": 1, "maximum": 600},
            "label": {"type": "string"}, "loud": {"type": "boolean"}},
            "required": ["minutes"]}}},
    {"type": "function", "function": {
        "name": "add_to_list", "description": "Add items to a shopping list.",
        "parameters": {"type": "object", "properties": {
            "items": {"type": "array", "items": {"type": "string"}, "maxItems": 5},
            "list_name": {"type": "string"}},
            "required": ["items"]}}},
]

REQUESTS = [
    "What's the weather in Paris?",
    "Is it cold in Oslo today, in celsius please",
    "weather for San Francisco in fahrenheit",
    "Email bob@example.com that the meeting moved to 3pm",
    "Send a note to Alice saying lunch is at noon",
    "Set a timer for 25 minutes called pomodoro",
    "timer 5 minutes, make it loud",
    "Add milk, eggs and bread to my groceries list",
    "put apples on the shopping list",
    "Remind me in 90 minutes to call mom",
    "Tell me a joke",
    "What's 2 plus 2?",
    "Send the weather in Rome to carol@example.org",
    "Start a 10 minute timer and tell me the weather in Lisbon",
    "Write to dave@example.com: the report is done, thanks!",
    "Add 3 bananas to the list named weekend",
    "How warm is Tokyo in fahrenheit?",
    "Ping erin@example.com about the 7 tickets",
    "Set timer 45",
    "Nothing to do here, just saying hi 👋",
]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from transformers import BertConfig

    from needle_core.modeling_needle import NeedleConfig, NeedleForToolCalling
    from training.export import export_onnx, write_manifest

    root = tmp_path_factory.mktemp("tiny_export")
    torch.manual_seed(0)
    encoder = BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=128, max_position_embeddings=512).to_dict()
    cfg = NeedleConfig(encoder=encoder, decoder_layers=2, decoder_heads=4, decoder_ffn=128, dropout=0.0)
    model = NeedleForToolCalling(cfg).eval()
    with torch.no_grad():  # sharper random scores: fewer near-ties for fp32 rounding to break
        for head in (model.struct_head, model.ptr_query, model.ptr_key):
            head.weight.mul_(10.0)
    ckpt = root / "checkpoint"
    model.save_pretrained(str(ckpt))
    fp32 = export_onnx(str(ckpt), str(root / "fp32"))
    write_manifest(fp32)
    return {"root": root, "checkpoint": ckpt, "fp32": fp32}


@pytest.fixture(scope="module")
def cases():
    specs = to_tool_specs(TOOLS)
    renderer = Renderer()
    return specs, [renderer.render([{"role": "user", "content": q}], specs) for q in REQUESTS]


@pytest.fixture(scope="module")
def engines(exported):
    from training.torch_engine import TorchEngine

    return OnnxEngine(exported["fp32"], threads=1), TorchEngine(exported["checkpoint"], threads=1)


def _decode_traced(engine, rendered, specs, tool_choice, monkeypatch):
    """Calls per request and the logits of every step (batch of all requests, padded)."""
    import needle_core.decoding as decoding
    import needle_core.engine as engine_module

    trace: list[np.ndarray] = []

    def traced(decoders, step_fn, max_steps=256):
        def recording(prev, kinds):
            logits = step_fn(prev, kinds)
            trace.append(np.array(logits, copy=True))
            return logits

        return decoding.greedy_decode_batch(decoders, recording, max_steps=max_steps)

    monkeypatch.setattr(engine_module, "greedy_decode_batch", traced)
    decoders = [CallDecoder(r, specs, tool_choice=tool_choice) for r in rendered]
    if isinstance(engine, OnnxEngine):
        out = engine.decode(decoders, engine.encode([r.ids for r in rendered]))
    else:
        step = engine.step_fn(engine.encode([r.ids for r in rendered]), len(decoders), trace=trace)
        out = decoding.greedy_decode_batch(decoders, step)
    monkeypatch.undo()
    return [calls for calls, _, _ in out], trace


def test_graphs_use_fused_attention_and_per_layer_caches(exported):
    """The speed-ups of format /3 stay in the graphs: one MultiHeadAttention node per encoder
    layer and two per decoder layer (self-attention on the cache, cross-attention), and one K/V
    input and output per decoder layer (no stacked cache split each step)."""
    import onnx

    encoder = onnx.load(str(exported["fp32"] / "encoder.onnx")).graph
    assert [n.op_type for n in encoder.node].count("MultiHeadAttention") == 2  # the tiny encoder's layers
    decoder = onnx.load(str(exported["fp32"] / "decoder.onnx")).graph
    assert [n.op_type for n in decoder.node].count("MultiHeadAttention") == 4  # 2 layers x (self, cross)
    assert "Softmax" not in {n.op_type for n in decoder.node}
    inputs, outputs = [i.name for i in decoder.input], [o.name for o in decoder.output]
    for prefix in ("cross_k", "cross_v", "past_k", "past_v"):
        assert [name for name in inputs if name.startswith(prefix)] == [f"{prefix}.0", f"{prefix}.1"]
    assert outputs == ["logits", "new_k.0", "new_k.1", "new_v.0", "new_v.1"]


def test_encoder_outputs_match(engines, cases):
    onnx_engine, torch_engine = engines
    _, rendered = cases
    ids = [r.ids for r in rendered]
    a, b = onnx_engine.encode(ids), torch_engine.encode(ids)
    for key in ("enc", "cross_k", "cross_v", "ptr_keys"):
        np.testing.assert_allclose(a[key], b[key], atol=1e-4, rtol=0, err_msg=key)


@pytest.mark.parametrize("tool_choice", ["auto", "required"])
def test_onnx_calls_and_logits_equal_pytorch(engines, cases, tool_choice, monkeypatch):
    onnx_engine, torch_engine = engines
    specs, rendered = cases
    onnx_calls, onnx_trace = _decode_traced(onnx_engine, rendered, specs, tool_choice, monkeypatch)
    torch_calls, torch_trace = _decode_traced(torch_engine, rendered, specs, tool_choice, monkeypatch)
    for q, a, b in zip(REQUESTS, onnx_calls, torch_calls):
        assert a == b, f"{q!r}: ONNX {a} != PyTorch {b}"
    assert len(onnx_trace) == len(torch_trace) > 1
    for step, (a, b) in enumerate(zip(onnx_trace, torch_trace)):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=0, err_msg=f"logits at step {step}")
    if tool_choice == "required":
        assert all(calls for calls in onnx_calls)  # the comparison covered real calls and arguments


def test_int8_quantization_reports_agreement(exported, engines, cases):
    from training.export import quantize
    from training.torch_engine import decision_agreement

    specs, rendered = cases
    int8 = quantize(str(exported["fp32"]), str(exported["root"] / "int8"), "int8")
    int8_engine = OnnxEngine(int8, threads=1)
    assert int8_engine.meta["precision"] == "int8"
    agreement = decision_agreement(engines[0], int8_engine, rendered, specs, tool_choice="required")
    assert isinstance(agreement, float) and 0.0 <= agreement <= 1.0
    print(f"int8 vs fp32 agreement on {len(rendered)} requests (random tiny model): {agreement:.2f}")


def test_manifest_rejects_tampered_file(exported, tmp_path):
    bad = tmp_path / "tampered"
    shutil.copytree(exported["fp32"], bad)
    data = bytearray((bad / "encoder.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / "encoder.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="encoder.onnx"):
        OnnxEngine(bad, threads=1)


@pytest.mark.parametrize("name", ["decoder.onnx", "manifest.json"])
def test_manifest_rejects_missing_file(exported, tmp_path, name):
    bad = tmp_path / "incomplete"
    shutil.copytree(exported["fp32"], bad)
    (bad / name).unlink()
    with pytest.raises(ModelFileError, match=name.replace(".", r"\.")):
        OnnxEngine(bad, threads=1)


def test_older_export_format_is_refused_clearly(exported, tmp_path):
    from training.export import write_manifest

    old = tmp_path / "old"
    shutil.copytree(exported["fp32"], old)
    meta = json.loads((old / "needle.json").read_text())
    meta["format"] = "needle-onnx/1"
    (old / "needle.json").write_text(json.dumps(meta))
    write_manifest(old)
    with pytest.raises(ModelFileError, match="needle-onnx/1.*needle export"):
        OnnxEngine(old, threads=1)


def test_mixed_precision_is_int8_encoder_with_column_scales_and_int4_decoder(exported, tmp_path):
    """``mixed`` (the default): dynamic int8 encoder whose MatMul weights carry one scale per
    output column, and a 4-bit (MatMulNBits) decoder; the engine loads it."""
    import onnx
    from onnx import numpy_helper

    from training.export import DEFAULT_PRECISION, quantize

    assert DEFAULT_PRECISION == "mixed"
    out = quantize(exported["fp32"], str(tmp_path / "mixed"), "mixed")
    encoder = onnx.load(str(out / "encoder.onnx")).graph
    assert any(n.op_type == "MatMulInteger" for n in encoder.node)
    assert not any(n.op_type == "MatMulNBits" for n in encoder.node)
    weights = {n.input[1] for n in encoder.node if n.op_type == "MatMulInteger"}
    scales = {i.name: numpy_helper.to_array(i) for i in encoder.initializer}
    column_scales = [scales[w.removesuffix("_quantized") + "_scale"] for w in weights if w.endswith("_quantized")]
    assert column_scales and all(s.ndim == 1 and s.size > 1 for s in column_scales)
    decoder = onnx.load(str(out / "decoder.onnx")).graph
    assert any(n.op_type == "MatMulNBits" for n in decoder.node)
    engine = OnnxEngine(out, threads=1)
    assert engine.meta["precision"] == "mixed"


def test_agreement_with_fp32_compares_calls_on_canonical_requests(exported, tmp_path):
    from training.data import write_jsonl
    from training.export import agreement_with_fp32, quantize

    tool = {"name": "get_weather", "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
    data = tmp_path / "requests.jsonl"
    write_jsonl(data, [{"messages": [{"role": "user", "content": f"weather in {city}"}], "tools": [tool], "calls": []}
                       for city in ("Paris", "Rome", "Oslo")])
    assert agreement_with_fp32(exported["fp32"], exported["fp32"], [str(data)]) == {"requests": 3, "agreement": 1.0}
    int8 = quantize(exported["fp32"], str(tmp_path / "int8"), "int8")
    report = agreement_with_fp32(exported["fp32"], int8, [str(data)], n=2)
    assert report["requests"] == 2 and report["agreement"] in (0.0, 0.5, 1.0)


def test_unknown_precision_is_refused(exported, tmp_path):
    from training.export import quantize

    with pytest.raises(ValueError, match="unknown precision 'int2'.*mixed"):
        quantize(exported["fp32"], str(tmp_path / "x"), "int2")


def test_forced_steps_fed_together_equal_one_at_a_time(engines, cases, monkeypatch):
    """Forced actions are fed to the decoder graph in bulk ([B, n] steps); the calls and the logits of
    every decision equal feeding the same steps one per graph run."""
    import needle_core.decoding as decoding
    import needle_core.engine as engine_module

    onnx_engine, _ = engines
    specs, rendered = cases
    widths: list[int] = []

    def run(split: bool):
        trace: list[np.ndarray] = []

        def patched(decoders, step_fn, max_steps=256):
            def step(prev, kinds):
                widths.append(prev.shape[1])
                columns = range(prev.shape[1]) if split else [slice(None)]
                for i in columns:
                    cols = slice(i, i + 1) if split else i
                    logits = step_fn(prev[:, cols], kinds[:, cols])
                trace.append(np.array(logits, copy=True))
                return logits

            return decoding.greedy_decode_batch(decoders, step, max_steps=max_steps)

        monkeypatch.setattr(engine_module, "greedy_decode_batch", patched)
        out = [onnx_engine.decode([CallDecoder(r, specs, tool_choice="required")], onnx_engine.encode([r.ids]))[0][0]
               for r in rendered]
        monkeypatch.undo()
        return out, trace

    bulk_calls, bulk_trace = run(split=False)
    assert max(widths) > 1  # some forced steps were fed together
    single_calls, single_trace = run(split=True)
    assert bulk_calls == single_calls
    for a, b in zip(bulk_trace, single_trace):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=0)


def test_the_pytorch_model_is_rebuilt_from_a_model_folder(exported, tmp_path):
    """`load_student` on an exported folder gives back the checkpoint's weights: exactly from fp32
    graphs, within the quantization step from mixed ones (weights perturbed as in a trained
    model); a folder without the parameter maps is refused, naming what it lacks."""
    from needle_core.modeling_needle import NeedleForToolCalling
    from training.export import export_onnx, quantize, write_manifest
    from training.onnx_weights import load_student

    original = dict(NeedleForToolCalling.from_pretrained(str(exported["checkpoint"])).named_parameters())
    rebuilt = dict(load_student(exported["fp32"]).named_parameters())
    assert rebuilt.keys() == original.keys()
    for name, p in original.items():
        assert torch.equal(rebuilt[name], p), name

    trained_like = NeedleForToolCalling.from_pretrained(str(exported["checkpoint"]))
    with torch.no_grad():
        for p in trained_like.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    trained_like.save_pretrained(str(tmp_path / "checkpoint"))
    fp32 = export_onnx(str(tmp_path / "checkpoint"), str(tmp_path / "fp32"))
    mixed = quantize(fp32, str(tmp_path / "mixed"), "mixed")
    original = dict(trained_like.named_parameters())
    for name, p in load_student(mixed).named_parameters():
        step = original[name].abs().max() / 7  # a 4-bit block's scale is at most max/7
        assert torch.all((p - original[name]).abs() <= step + 1e-6), name

    meta = json.loads((mixed / "needle.json").read_text())
    del meta["encoder_params"]
    (mixed / "needle.json").write_text(json.dumps(meta))
    write_manifest(mixed)
    with pytest.raises(ValueError, match="lacks encoder_params.*re-export"):
        load_student(mixed)


def test_a_model_folder_missing_a_weight_is_refused_by_name(exported, tmp_path):
    from training.onnx_weights import load_student

    broken = tmp_path / "broken"
    shutil.copytree(exported["fp32"], broken)
    meta = json.loads((broken / "needle.json").read_text())
    del meta["decoder_params"]["struct_head.weight"]
    (broken / "needle.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="weights missing from .*decoder.onnx: .*struct_head.weight"):
        load_student(broken)
    with pytest.raises(FileNotFoundError, match="neither a training checkpoint"):
        load_student(tmp_path)


def test_finetune_trains_the_decoder_of_a_model_folder(exported, tmp_path):
    """`needle finetune` on a few examples: the decoder is rebuilt from the graphs and trained,
    the encoder graph is kept byte for byte, and the result is a folder the engine loads."""
    from training.data import write_jsonl
    from training.finetune import finetune

    tool = {"name": "set_timer", "description": "Start a timer",
            "parameters": {"type": "object", "properties": {"minutes": {"type": "integer"}}, "required": ["minutes"]}}
    data = tmp_path / "mine.jsonl"
    write_jsonl(data, [{"id": f"t{m}", "messages": [{"role": "user", "content": f"timer for {m} minutes"}],
                        "tools": [tool], "calls": [{"name": "set_timer", "arguments": {"minutes": m}}]}
                       for m in (5, 10, 25, 40)])
    report = finetune([str(data)], str(tmp_path / "ft"), base_dir=str(exported["fp32"]), epochs=2, batch_size=2)
    assert report["encoded"] == 4 and report["steps"] == 4
    assert (tmp_path / "ft" / "encoder.onnx").read_bytes() == (exported["fp32"] / "encoder.onnx").read_bytes()
    assert (tmp_path / "ft" / "decoder.onnx").read_bytes() != (exported["fp32"] / "decoder.onnx").read_bytes()
    engine = OnnxEngine(tmp_path / "ft", threads=1)
    assert engine.meta["name"].endswith("-ft") and "encoder_params" in engine.meta
