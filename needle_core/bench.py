"""`needle bench`: latency, throughput, size and memory of the engine, on BFCL simple_python requests.

Requests are the first user message of each entry of ``BFCL_v4_simple_python.json`` (JSON lines,
read from the installed ``bfcl-eval`` package); tools are its functions converted exactly as the
evaluation does (`training.evaluate.bfcl_tool`). Measured, after a warm-up:

* latency per call (median, p90; ms), one request at a time, ONNX Runtime on 1 thread, end to end
  through `Needle.call` (conversion, rendering, encoding, constrained decoding, validation);
* calls per second with `Needle.call_batch` (batch 1, 8 and 16) on 2 threads (the encoder's; the
  decoder always runs on 1, see `needle_core.engine`), and the latency of batch 1; and calls per
  second with 2 threads sharing one `Needle` on 1 ONNX Runtime thread each. ``call_batch``
  takes one toolset per batch, so a batch of B requests is sent with the union of their B
  functions (the single-call figures use each request's own function); it runs each request as
  if called alone (`Needle.call_batch` says why), so it gains only the toolset converted once;
* encoder tokens per second and decoder steps per second (1 thread, one request at a time);
* the constrained state machine's own cost per step: the time spent in `CallDecoder.allowed`
  and `CallDecoder.step` alone, with the decoders driven by random scores (no model);
* model size on disk (every file in the model folder) and peak resident memory, taken in a fresh
  subprocess that loads only the engine and runs a few calls;
* with ``--torch-checkpoint``, the same latency run through the fp32 PyTorch model
  (`training.torch_engine.TorchEngine`, 1 thread, KV-cached ``decode_step``, same state
  machine) and the ONNX speed-up over it, with the speed-up there would be if a call cost only
  its ONNX encoder run (PyTorch median / encoder median): the ceiling of any work on decoding or
  Python.

Prints a table and writes everything, with the machine's CPU model and core count, to ``--out``.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

BFCL_FILE = "BFCL_v4_simple_python.json"
BATCH_SIZES = (8, 16)
BATCH_THREADS = 2


# ---- data --------------------------------------------------------------------------------------------
def bfcl_data_dir() -> Path:
    """The data folder of the installed ``bfcl-eval`` package (found without importing it)."""
    spec = importlib.util.find_spec("bfcl_eval")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("needle bench reads BFCL requests from the bfcl-eval package, which is not installed: "
                           "pip install --no-deps bfcl-eval")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def load_requests(n: int) -> list[tuple[str, list[dict]]]:
    """(request text, OpenAI tools) for the first ``n`` BFCL simple_python entries (cycled if n > 400)."""
    from training.evaluate import bfcl_tool

    path = bfcl_data_dir() / BFCL_FILE
    with open(path, encoding="utf-8") as fh:
        entries = [json.loads(line) for line in fh if line.strip()]
    cases = []
    for entry in entries:
        turns = [m for turn in entry["question"] for m in (turn if isinstance(turn, list) else [turn])]
        text = next((m.get("content") or "" for m in turns if m.get("role") == "user"), "")
        cases.append((text, [bfcl_tool(f) for f in entry["function"]]))
    if not cases:
        raise RuntimeError(f"{path} holds no requests")
    return [cases[i % len(cases)] for i in range(n)]


# ---- helpers -----------------------------------------------------------------------------------------
# CPU features that decide the int8 kernels (the same model name has come with and without them)
INT8_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")


def machine_info() -> dict:
    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                key = line.split(":", 1)[0].strip().lower()
                if key == "model name":
                    cpu = line.split(":", 1)[1].strip()
                elif key == "flags":
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    import onnxruntime

    return {"cpu": cpu, "int8_features": [f for f in INT8_FEATURES if f in flags], "logical_cores": os.cpu_count(), "usable_cores": usable, "platform": platform.platform(),
            "python": platform.python_version(), "onnxruntime": onnxruntime.__version__, "numpy": np.__version__}


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if values else float("nan")


def summary_ms(values_ms: list[float]) -> dict:
    return {"median": percentile(values_ms, 50), "p90": percentile(values_ms, 90), "mean": float(np.mean(values_ms)),
            "min": float(np.min(values_ms)), "max": float(np.max(values_ms)), "n": len(values_ms)}


def dir_size_mb(model_dir: Path) -> tuple[float, dict]:
    files = {p.name: p.stat().st_size for p in sorted(model_dir.iterdir()) if p.is_file()}
    return sum(files.values()) / 1e6, files


def _bar(iterable, desc: str, quiet: bool, total: int | None = None):
    return tqdm(iterable, desc=desc, total=total, disable=quiet, leave=False, file=sys.stderr)


# ---- measurements ------------------------------------------------------------------------------------
def measure_latency(needle, cases, warmup: int, desc: str, quiet: bool = False) -> dict:
    """Per-call wall time of ``needle.call`` (ms), one request at a time."""
    for text, tools in cases[:warmup]:
        needle.call(text, tools)
    times, calls, errors = [], 0, 0
    for text, tools in _bar(cases, desc, quiet):
        t0 = time.perf_counter()
        try:
            result = needle.call(text, tools)
        except Exception:  # noqa: BLE001 - a request the engine rejects is counted, never timed
            errors += 1
            continue
        times.append((time.perf_counter() - t0) * 1e3)
        calls += bool(result.calls)
    out = summary_ms(times)
    out.update(errors=errors, requests_with_a_call=calls)
    return out


def _union_tools(batch) -> list[dict]:
    seen, tools = set(), []
    for _, ts in batch:
        for t in ts:
            name = t["function"]["name"]
            if name not in seen:
                seen.add(name)
                tools.append(t)
    return tools


def measure_throughput(model_dir: Path, cases, batch_sizes, threads: int, quiet: bool = False) -> dict:
    """Calls per second through `Needle.call_batch` on ``threads`` ONNX Runtime threads.

    ``call_batch`` takes one toolset, so a batch of B requests is sent with the union of their B
    functions. The same (request, union toolset) pairs are also sent one call at a time, so the
    gain from batching is measured on identical work.
    """
    from needle_core.api import Needle

    needle = Needle(model_dir, threads=threads)
    out: dict[str, Any] = {"threads": threads}
    one = measure_latency(needle, cases, 5, f"batch 1, own function, {threads} threads", quiet)
    out["batch_1"] = {"calls_per_s": 1e3 / one["mean"], "median_ms": one["median"], "p90_ms": one["p90"],
                      "toolset": "each request's own function"}
    out["concurrent"] = measure_concurrent(model_dir, cases, threads, quiet)
    for size in batch_sizes:
        batches = [cases[i: i + size] for i in range(0, len(cases), size)]
        batches = [b for b in batches if len(b) == size] or batches[:1]
        toolsets = [_union_tools(b) for b in batches]
        needle.call_batch([t for t, _ in batches[0]], toolsets[0])  # warm-up
        done, t0 = 0, time.perf_counter()
        for batch, tools in _bar(list(zip(batches, toolsets)), f"batch {size}, {threads} threads", quiet):
            needle.call_batch([t for t, _ in batch], tools)
            done += len(batch)
        batched = done / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for batch, tools in _bar(list(zip(batches, toolsets)), f"same work one by one, {threads} threads", quiet):
            for text, _ in batch:
                needle.call(text, tools)
        single = done / (time.perf_counter() - t0)
        out[f"batch_{size}"] = {"calls_per_s": batched, "same_work_one_by_one_calls_per_s": single,
                                "gain": batched / single, "requests": done,
                                "toolset": f"union of the batch's {size} BFCL functions"}
    return out


def measure_concurrent(model_dir: Path, cases, callers: int, quiet: bool = False) -> dict:
    """Calls per second with ``callers`` threads sharing one `Needle` on 1 ONNX Runtime thread each:
    the other way to use the cores, one request per core instead of one request over all cores."""
    from concurrent.futures import ThreadPoolExecutor

    from needle_core.api import Needle

    needle = Needle(model_dir, threads=1)

    def call(case):
        return needle.call(*case)

    with ThreadPoolExecutor(callers) as pool:
        list(pool.map(call, cases[:2 * callers]))  # warm-up
        t0 = time.perf_counter()
        for _ in _bar(pool.map(call, cases), f"{callers} callers, 1 thread each", quiet, total=len(cases)):
            pass
        seconds = time.perf_counter() - t0
    return {"calls_per_s": len(cases) / seconds, "callers": callers, "toolset": "each request's own function"}


def render_cases(needle, cases) -> list[tuple[Any, list]]:
    """(Rendered, specs) per request, as `Needle.call` renders it."""
    from needle_core.api import _clip_descriptions
    from needle_core.schema import to_tool_specs

    out = []
    for text, tools in cases:
        specs, _ = _clip_descriptions(to_tool_specs(tools))
        out.append((needle.renderer.render([{"role": "user", "content": text}], specs), specs))
    return out


def measure_engine_speed(engine, rendered, quiet: bool = False) -> tuple[dict, dict]:
    """Encoder tokens/s and decoder steps/s, one request at a time."""
    from needle_core.decoding import CallDecoder

    for r, specs in rendered[:5]:  # warm-up
        engine.decode([CallDecoder(r, specs)], engine.encode([r.ids]))
    tokens = steps = 0
    t_enc = t_dec = 0.0
    enc_ms = []
    for r, specs in _bar(rendered, "encoder / decoder speed", quiet):
        t0 = time.perf_counter()
        encoded = engine.encode([r.ids])
        t1 = time.perf_counter()
        (_, _, n), = engine.decode([CallDecoder(r, specs)], encoded)
        t2 = time.perf_counter()
        tokens += len(r.ids)
        steps += n
        t_enc += t1 - t0
        t_dec += t2 - t1
        enc_ms.append((t1 - t0) * 1e3)
    enc = {"tokens_per_s": tokens / t_enc, "mean_tokens_per_request": tokens / len(rendered),
           "ms_per_request": t_enc * 1e3 / len(rendered), "median_ms_per_request": percentile(enc_ms, 50)}
    dec = {"steps_per_s": steps / t_dec, "ms_per_step": t_dec * 1e3 / max(steps, 1),
           "mean_steps_per_request": steps / len(rendered)}
    return enc, dec


def measure_state_machine(rendered, seed: int = 0, max_steps: int = 256, quiet: bool = False) -> dict:
    """Time in `CallDecoder.allowed` + `CallDecoder.step` per step, decoders driven by random scores."""
    from needle_core.callformat import N_STRUCT
    from needle_core.decoding import CallDecoder, _closing_action

    rng = np.random.default_rng(seed)
    per_step: list[float] = []
    first_step: list[float] = []
    for r, specs in _bar(rendered, "state machine (random scores)", quiet):
        d = CallDecoder(r, specs)
        scores_all = rng.standard_normal((max_steps + 1, N_STRUCT + len(r.ids)))
        while not d.done:
            t0 = time.perf_counter_ns()
            struct, pos = d.allowed()
            t1 = time.perf_counter_ns()
            if d.steps >= max_steps:
                action = _closing_action(struct, pos)
            else:
                scores = np.where(np.concatenate([struct, pos]), scores_all[d.steps], -np.inf)
                action = int(np.argmax(scores))
            t2 = time.perf_counter_ns()
            d.step(action)
            t3 = time.perf_counter_ns()
            ms = ((t1 - t0) + (t3 - t2)) / 1e6
            (first_step if d.steps == 1 else per_step).append(ms)
    every = first_step + per_step
    return {"ms_per_step_mean": float(np.mean(every)), "ms_per_step_median": percentile(every, 50),
            "ms_per_step_p99": percentile(every, 99), "ms_per_step_max": float(np.max(every)),
            "first_step_ms_mean": float(np.mean(first_step)) if first_step else None,
            "later_steps_ms_mean": float(np.mean(per_step)) if per_step else None,
            "steps": len(every), "requests": len(rendered),
            "note": "the first step includes the per-request feasibility analysis (valid value spans)"}


def _vm_status_mb() -> dict:
    """This process's high-water mark and resident set from /proc (Linux; {} elsewhere). Unlike
    ru_maxrss, which a child inherits from its parent across fork/exec, VmHWM is this image's own."""
    try:
        with open("/proc/self/status", encoding="utf-8") as fh:
            status = {line.split(":")[0]: line.split()[1] for line in fh if line.startswith(("VmHWM:", "VmRSS:"))}
        return {"hwm": int(status["VmHWM"]) / 1024, "rss": int(status["VmRSS"]) / 1024}
    except (OSError, KeyError, ValueError, IndexError):
        return {}


def _rss_probe(model_dir: str, n: int) -> None:
    """Run in a fresh interpreter by `measure_memory`: load the engine, make ``n`` calls, print RSS as JSON."""
    import resource

    from needle_core.api import Needle

    scale = 1024 * 1024 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux

    def peak_mb() -> tuple[float, dict]:
        vm = _vm_status_mb()
        return (vm["hwm"] if vm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale), vm

    cases = load_requests(n)
    base, _ = peak_mb()
    t0 = time.perf_counter()
    needle = Needle(model_dir, threads=1)
    load_s = time.perf_counter() - t0
    loaded, _ = peak_mb()
    for text, tools in cases:
        needle.call(text, tools)
    peak, vm = peak_mb()
    out = {"interpreter_mb": base, "after_load_mb": loaded, "peak_rss_mb": peak, "calls": len(cases), "load_s": load_s,
           "measured_by": "VmHWM" if vm else "ru_maxrss"}
    if vm:  # what stays resident after the calls (the load's transient buffers are gone by then)
        out["resident_after_calls_mb"] = vm["rss"]
    print(json.dumps(out))


def measure_memory(model_dir: Path, n: int = 20) -> dict:
    code = "import sys; from needle_core.bench import _rss_probe; _rss_probe(sys.argv[1], int(sys.argv[2]))"
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run([sys.executable, "-c", code, str(model_dir), str(n)], capture_output=True, text=True,
                          env=env, timeout=600, check=False)
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout).strip()[-2000:]}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["note"] = ("high-water marks of a fresh process that imports needle_core (interpreter_mb), loads the engine "
                   "on 1 thread (after_load_mb) and makes the calls (peak_rss_mb); VmHWM on Linux, else ru_maxrss, "
                   "which starts at the parent's own peak")
    return out


def measure_torch(model_dir: Path, checkpoint: str, cases, warmup: int, quiet: bool = False) -> dict:
    """Latency through the fp32 PyTorch model, same pipeline as `Needle.call` (engine swapped)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return {"skipped": "torch is not installed (pip install 'needle[train]')"}
    from needle_core.api import Needle
    from training.torch_engine import TorchEngine

    needle = Needle(model_dir, threads=1)
    needle.engine = TorchEngine(checkpoint, threads=1)
    out = measure_latency(needle, cases, warmup, "latency, PyTorch fp32, 1 thread", quiet)
    out["checkpoint"] = str(checkpoint)
    out["threads"] = 1
    return out


# ---- the command -----------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="model folder (default: the bundled model)")
    parser.add_argument("--n", type=int, default=200, help="number of BFCL simple_python requests (default 200)")
    parser.add_argument("--warmup", type=int, default=10, help="warm-up calls before each timed run (default 10)")
    parser.add_argument("--out", default="bench.json", help="where to write the JSON results (default bench.json)")
    parser.add_argument("--torch-checkpoint", default=None, metavar="DIR",
                        help="also time this PyTorch checkpoint (fp32, 1 thread) and report the ONNX speed-up")
    parser.add_argument("--batch-sizes", default=",".join(map(str, BATCH_SIZES)),
                        help="call_batch sizes for the throughput run (default 8,16)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocess")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _fmt(x: Any, digits: int = 2) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return str(x)


def format_table(res: dict) -> str:
    rows: list[tuple[str, str]] = []
    lat = res["latency_ms"]
    kernel = res["model"].get("int8_kernel")
    rows.append(("model", f"{res['model']['dir']} ({res['model'].get('precision') or '?'}"
                          f"{f', int8 MatMuls run {kernel}' if kernel else ''})"))
    features = ", ".join(res["machine"].get("int8_features") or []) or "not read"
    rows.append(("machine", f"{res['machine']['cpu']} ({features}), {res['machine']['usable_cores']} usable cores"))
    rows.append(("requests", f"{lat['n']} BFCL simple_python"))
    rows.append(("latency per call, 1 thread", f"median {_fmt(lat['median'])} ms, p90 {_fmt(lat['p90'])} ms"))
    one = res["throughput"]["batch_1"]
    if "median_ms" in one:
        rows.append((f"latency per call, {res['throughput']['threads']} encoder threads",
                     f"median {_fmt(one['median_ms'])} ms, p90 {_fmt(one['p90_ms'])} ms"))
    conc = res["throughput"].get("concurrent")
    if conc:
        rows.append((f"throughput, {conc['callers']} callers sharing one Needle(threads=1)",
                     f"{_fmt(conc['calls_per_s'], 1)} calls/s ({conc['toolset']})"))
    for key, value in res["throughput"].items():
        if key.startswith("batch_"):
            text = f"{_fmt(value['calls_per_s'], 1)} calls/s ({value['toolset']}"
            if "gain" in value:
                text += f"; {_fmt(value['gain'])}x one by one"
            rows.append((f"throughput, {key.replace('_', ' ')}, {res['throughput']['threads']} threads", text + ")"))
    rows.append(("encoder", f"{_fmt(res['encoder']['tokens_per_s'], 0)} tokens/s "
                            f"({_fmt(res['encoder']['mean_tokens_per_request'], 0)} tokens per request, median "
                            f"{_fmt(res['encoder'].get('median_ms_per_request'))} ms per request)"))
    rows.append(("decoder", f"{_fmt(res['decoder']['steps_per_s'], 0)} steps/s "
                            f"({_fmt(res['decoder']['ms_per_step'], 3)} ms per step)"))
    sm = res["state_machine"]
    rows.append(("state machine per step", f"mean {_fmt(sm['ms_per_step_mean'], 4)} ms, median "
                                           f"{_fmt(sm['ms_per_step_median'], 4)} ms, p99 {_fmt(sm['ms_per_step_p99'], 4)} ms"))
    rows.append(("model size on disk", f"{_fmt(res['model']['size_mb'], 1)} MB"))
    mem = res.get("memory") or {}
    if "peak_rss_mb" in mem:
        resident = (f", {_fmt(mem['resident_after_calls_mb'], 0)} MB resident after {mem['calls']} calls"
                    if "resident_after_calls_mb" in mem else "")
        rows.append(("peak resident memory", f"{_fmt(mem['peak_rss_mb'], 0)} MB, fresh process "
                                             f"(interpreter + imports {_fmt(mem['interpreter_mb'], 0)} MB{resident})"))
        if "load_s" in mem:
            rows.append(("load time", f"{_fmt(mem['load_s'], 2)} s (Needle() in a fresh process, imports excluded)"))
    elif "error" in mem:
        rows.append(("peak resident memory", "failed (see JSON)"))
    torch_res = res.get("torch")
    if torch_res:
        if "skipped" in torch_res:
            rows.append(("PyTorch fp32", torch_res["skipped"]))
        else:
            rows.append(("latency per call, PyTorch fp32", f"median {_fmt(torch_res['median'])} ms, "
                                                           f"p90 {_fmt(torch_res['p90'])} ms"))
            rows.append(("ONNX speed-up over PyTorch", f"{_fmt(res['speedup_vs_torch'])}x (median latency)"))
            if "speedup_bound_encoder_only" in res:
                rows.append(("speed-up if only the encoder ran", f"{_fmt(res['speedup_bound_encoder_only'])}x (PyTorch "
                                                                 "median / ONNX encoder median: the most that faster "
                                                                 "decoding or Python could give)"))
    width = max(len(k) for k, _ in rows)
    line = "-" * (width + 2 + max(len(v) for _, v in rows))
    return "\n".join([line] + [f"{k.ljust(width)}  {v}" for k, v in rows] + [line])


def run(args: argparse.Namespace) -> int:
    from needle_core.api import Needle, bundled_model_dir

    model_dir = Path(args.model) if args.model else bundled_model_dir()
    batch_sizes = [int(x) for x in str(args.batch_sizes).split(",") if x.strip()]
    cases = load_requests(args.n)
    memory = None if args.no_memory else measure_memory(model_dir)  # first, while this process is small
    needle = Needle(model_dir, threads=1)
    size_mb, files = dir_size_mb(model_dir)
    res: dict[str, Any] = {
        "model": {"dir": str(model_dir), "precision": needle.engine.meta.get("precision"),
                  "int8_kernel": needle.engine.int8_form, "size_mb": size_mb,
                  "files": files},
        "machine": machine_info(),
        "data": {"source": f"bfcl_eval/data/{BFCL_FILE}", "requests": len(cases), "warmup": args.warmup},
    }
    res["latency_ms"] = measure_latency(needle, cases, args.warmup, "latency, ONNX, 1 thread", args.quiet)
    res["latency_ms"]["threads"] = 1
    rendered = render_cases(needle, cases)
    res["encoder"], res["decoder"] = measure_engine_speed(needle.engine, rendered, args.quiet)
    res["state_machine"] = measure_state_machine(rendered, quiet=args.quiet)
    res["throughput"] = measure_throughput(model_dir, cases, batch_sizes, BATCH_THREADS, args.quiet)
    res["memory"] = memory
    if args.torch_checkpoint:
        res["torch"] = measure_torch(model_dir, args.torch_checkpoint, cases, args.warmup, args.quiet)
        if "median" in res["torch"]:
            res["speedup_vs_torch"] = res["torch"]["median"] / res["latency_ms"]["median"]
            res["speedup_bound_encoder_only"] = res["torch"]["median"] / res["encoder"]["median_ms_per_request"]
    print(format_table(res))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))
        print(f"wrote {args.out}")
    return 0
