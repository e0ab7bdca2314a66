"""`needle bench`'s memory probe: a fresh process loads the bundled model, makes calls and reports
its peak and steady memory and its load time (the figures README quotes)."""
import pytest

from needle_core.api import bundled_model_dir


def test_memory_probe_reports_peak_steady_memory_and_load_time():
    bench = pytest.importorskip("needle_core.bench")
    if not (bundled_model_dir() / "encoder.onnx").is_file():
        pytest.skip("no bundled model")
    try:
        bench.load_requests(2)
    except (ImportError, RuntimeError, OSError):
        pytest.skip("bfcl-eval (the requests the probe calls with) is not installed")
    mem = bench.measure_memory(bundled_model_dir(), n=2)
    assert "error" not in mem, mem.get("error")
    assert mem["calls"] == 2 and 0 < mem["load_s"] < 60
    assert mem["interpreter_mb"] <= mem["after_load_mb"] <= mem["peak_rss_mb"] < 1000
    if mem["measured_by"] == "VmHWM":  # Linux: the probe process's own figures, not its parent's ru_maxrss
        assert mem["after_load_mb"] - mem["interpreter_mb"] > 10  # the ~27 MB model and its sessions show
        assert 0 < mem["resident_after_calls_mb"] <= mem["peak_rss_mb"]
