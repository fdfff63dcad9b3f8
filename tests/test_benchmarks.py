"""Quick modes of the benchmark scripts, to keep them working (the full runs are not tests)."""

import platform
import time

import pytest
from conftest import backend_env

from keras_sepvit.export.profiling import cpu_description, machine_description


def _cpu_model():
    """The machine's CPU model as the benchmark headers must name it."""
    return cpu_description().split(" (")[0]


X86_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R14 96-Core Processor
flags\t\t: fpu sse2 avx2 fma avx512f avx512_vnni avx512_bf16 sha_ni
processor\t: 1
model name\t: AMD EPYC 9R14 96-Core Processor
"""
ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes asimdhp asimddp sve i8mm bf16 sve2
CPU implementer\t: 0x41
CPU part\t: 0xd40
"""


@pytest.mark.parametrize(
    "text, model, extensions",
    [
        (
            X86_CPUINFO,
            "AMD EPYC 9R14 96-Core Processor",
            "avx2 fma avx512f avx512_vnni avx512_bf16",
        ),
        (ARM_CPUINFO, "implementer 0x41 part 0xd40", "asimd asimdhp asimddp i8mm bf16 sve sve2"),
    ],
)
def test_cpu_description_reads_model_and_vector_extensions(tmp_path, text, model, extensions):
    """The header's CPU: x86 model name + flags, ARM implementer/part + Features."""
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    described = cpu_description(str(path))
    assert model in described and f"; {extensions})" in described, described
    assert "sha_ni" not in described and "evtstrm" not in described, described
    missing = cpu_description(str(tmp_path / "absent"))
    assert "extensions not read" in missing and platform.machine() in missing, missing


def _assert_header_names_cpu(out, start):
    """The table's header line (it begins with `start`) names the machine's CPU."""
    headers = [line for line in out.splitlines() if line.startswith(start)]
    assert headers, f"no header line starting {start!r} in: {out[-2000:]}"
    assert f"CPU: {_cpu_model()} (" in headers[-1], headers[-1]


def test_tflite_profile_report_names_the_cpu():
    """benchmarks/tflite_profile.py prints `profiling.report`: its header names the CPU."""
    from keras_sepvit.export import profiling

    result = {"path": "m.tflite", "threads": 1, "runs": 3, "clock": "cpu", "ops": [],
              "delegation": (0, 0, 0), "logged": None, "model_ms": 1.0,
              "model_ms_before_after": (1.0, 1.0), "ops_ms": 0.0, "overhead_ms": 0.0}  # fmt: skip
    text = profiling.report(result)
    _assert_header_names_cpu(text, "CPU: ")
    assert "ai-edge-litert " in text, text


def test_machine_description_names_cpu_date_and_versions():
    line = machine_description(("numpy", "no-such-distribution"))
    assert _cpu_model() in line and "cores usable" in line, line
    assert "numpy " in line and "python " in line and "no-such" not in line, line


@pytest.mark.slow
def test_train_step_quick(load_script, capsys):
    rows = load_script("benchmarks", "train_step").main(["--quick"])
    assert [(r["backend"], r["jit"]) for r in rows] == [("tensorflow", False)]
    assert all(r[m] > 0 for r in rows for m in ("SepViT-T", "ConvNeXtTiny", "Swin-T"))
    out = capsys.readouterr().out
    assert "SepViT-T / ConvNeXtTiny" in out and "SepViT-T / Swin-T (PyTorch)" in out
    _assert_header_names_cpu(out, "Train step")


def test_edge_latency_orders(load_script):
    module = load_script("benchmarks", "edge_latency")
    calls = []
    runners = {key: (lambda key=key: calls.append(key)) for key in "ab"}
    for order, expected in (("interleaved", "ab" * 3), ("back-to-back", "aaabbb")):
        calls.clear()
        times = module.ORDERS[order](runners, runs=3, warmup=0)
        assert "".join(calls) == expected and set(times) == {"a", "b"}, (order, calls)


@pytest.mark.slow
def test_edge_latency_quick(load_script, capsys, monkeypatch):
    from keras_sepvit.export import TFLiteRunner

    module = load_script("benchmarks", "edge_latency")
    # Only the interpreter's invoke is timed: the Python-side input conversion
    # (numpy quantization for an int8-input peer) is not. A runner call made
    # 50 ms slower must not show in the figures.
    call = TFLiteRunner.__call__

    def slow_call(self, images):
        time.sleep(0.05)
        return call(self, images)

    monkeypatch.setattr(TFLiteRunner, "__call__", slow_call)
    out = module.main(["--quick"])
    results = out["latency_ms"]
    assert max(results.values()) < 50, results
    expected = {("SepViT-Lite", m) for m in module.SEPVIT_MODES}
    expected |= {("MobileNetV2", m) for m in module.PEER_MODES}
    assert {(k[0], k[1]) for k in results} == expected
    assert {k[2] for k in results} == {1, 2}
    assert all(ms > 0 for ms in results.values())
    # The int8 recipe puts every node of the file but the graph's I/O in XNNPACK.
    taken, total, partitions = out["delegation"]["SepViT-Lite", "int8"]
    assert 0 < taken <= total and partitions >= 1
    assert set(out["ratios"]) >= {"SepViT-Lite int8 / SepViT-Lite float32",
                                  "SepViT-Lite int8 / MobileNetV2 int8-full"}  # fmt: skip
    out = capsys.readouterr().out
    assert "| SepViT-Lite | int8 |" in out
    _assert_header_names_cpu(out, "TFLite (LiteRT")


@pytest.mark.slow
def test_onnx_latency_quick(load_script, capsys):
    module = load_script("benchmarks", "onnx_latency")
    out = module.main(["--quick"])
    results, profiles = out["latency_ms"], out["profiles"]
    models = ("SepViT-Lite", "PVTv2-b0") + module.LITE_VARIANTS
    assert set(results) == {(m, t) for m in models for t in (1, 2)}
    assert all(ms > 0 for ms in results.values())
    # Every file profiled per kernel; SepViT-Lite and PVTv2-b0 are both about
    # 0.6 GMACs at 224 (0.05 at the quick 64 px), the int8 file the same work.
    assert set(profiles) == set(models)
    for name, p in profiles.items():
        assert 0.03e9 < p["matrix_macs"] < 0.07e9, (name, p["matrix_macs"])
        assert 0 < p["matrix_ms"] < p["ms"], name
    out = capsys.readouterr().out
    assert "| PVTv2-b0 | 3.7 |" in out  # the peer has b0's size
    assert "| SepViT-Lite int8 | 1 |" in out and "interleaved" in out
    assert "| SepViT-Lite / PVTv2-b0 |" in out and "floor" in out
    _assert_header_names_cpu(out, "ONNX Runtime")


def test_inference_throughput_quick(load_script, capsys):
    results = load_script("benchmarks", "inference_throughput").main(["--quick"])
    assert set(results) == {(m, j) for m in ("SepViT-T", "ConvNeXtTiny") for j in (False, True)}
    assert all(rate > 0 for rate in results.values())
    out = capsys.readouterr().out
    assert "SepViT-T / ConvNeXt-T" in out
    _assert_header_names_cpu(out, "Keras inference throughput")


@pytest.mark.slow
def test_resolution_scaling_quick(load_script, capsys):
    module = load_script("benchmarks", "resolution_scaling")
    results = module.main(["--quick"])
    assert set(results) == {(m, s) for m in module.MODELS for s in (64, 128)}
    for r in results.values():
        assert r["ms"] > 0 and r["peak_mib"] >= 0, r
    # The analysis the full run illustrates: windowed scores grow linearly
    # with pixels, global ones quadratically.
    assert module.attention_gib(448, True) / module.attention_gib(224, True) == 16
    assert module.attention_gib(448, False) / module.attention_gib(224, False) == 4
    out = capsys.readouterr().out
    assert "SepViT-T / global" in out
    _assert_header_names_cpu(out, "SepViT-T backbone vs")


@pytest.mark.parametrize("mode", ["inference", "train"])
@pytest.mark.slow
def test_gpu_throughput_script_runs_on_jax_and_torch_without_tensorflow(mode):
    """The GPU script's quick mode on the CPU: SepViT on the JAX backend never
    imports TensorFlow (the GPU machine has none), inference and training."""
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # quick mode, times not asserted: XLA compiles fast rather than well (conftest)
    env = backend_env("jax", PYTHONPATH=root)
    proc = subprocess.run(
        [sys.executable, os.path.join(root, "benchmarks", "gpu_throughput.py"), "--quick",
         "--mode", mode],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "SepViT-T: " in proc.stdout and "TensorFlow imported: False" in proc.stdout
    assert "| Swin-T |" in proc.stdout and "SepViT / model" in proc.stdout
    assert ("Training" if mode == "train" else "Inference") + " throughput" in proc.stdout
