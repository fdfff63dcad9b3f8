"""Quick modes of the benchmark scripts, to keep them working (the full runs are not tests)."""

import pytest


@pytest.mark.slow
def test_train_step_quick(load_script, capsys):
    rows = load_script("benchmarks", "train_step").main(["--quick"])
    assert [(r["backend"], r["jit"]) for r in rows] == [("tensorflow", False)]
    assert all(r[m] > 0 for r in rows for m in ("SepViT-T", "ConvNeXtTiny", "Swin-T"))
    out = capsys.readouterr().out
    assert "SepViT-T / ConvNeXtTiny" in out and "SepViT-T / Swin-T (PyTorch)" in out


@pytest.mark.slow
def test_edge_latency_quick(load_script, capsys):
    module = load_script("benchmarks", "edge_latency")
    out = module.main(["--quick"])
    results = out["latency_ms"]
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
    assert "| SepViT-Lite | int8 |" in capsys.readouterr().out


@pytest.mark.slow
def test_onnx_latency_quick(load_script, capsys):
    module = load_script("benchmarks", "onnx_latency")
    results = module.main(["--quick"])
    models = ("SepViT-Lite", "PVTv2-b0") + module.LITE_VARIANTS
    assert set(results) == {(m, t) for m in models for t in (1, 2)}
    assert all(ms > 0 for ms in results.values())
    out = capsys.readouterr().out
    assert "| PVTv2-b0 | 3.7 |" in out  # the peer has b0's size
    assert "| SepViT-Lite int8 | 1 |" in out and "interleaved" in out


def test_inference_throughput_quick(load_script, capsys):
    results = load_script("benchmarks", "inference_throughput").main(["--quick"])
    assert set(results) == {(m, j) for m in ("SepViT-T", "ConvNeXtTiny") for j in (False, True)}
    assert all(rate > 0 for rate in results.values())
    assert "SepViT-T / ConvNeXt-T" in capsys.readouterr().out


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
    assert "SepViT-T / global" in capsys.readouterr().out


@pytest.mark.parametrize("mode", ["inference", "train"])
@pytest.mark.slow
def test_gpu_throughput_script_runs_on_jax_and_torch_without_tensorflow(mode):
    """The GPU script's quick mode on the CPU: SepViT on the JAX backend never
    imports TensorFlow (the GPU machine has none), inference and training."""
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=root)
    proc = subprocess.run(
        [sys.executable, os.path.join(root, "benchmarks", "gpu_throughput.py"), "--quick",
         "--mode", mode],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "SepViT-T: " in proc.stdout and "TensorFlow imported: False" in proc.stdout
    assert "| Swin-T |" in proc.stdout and "SepViT / model" in proc.stdout
    assert ("Training" if mode == "train" else "Inference") + " throughput" in proc.stdout
