"""Quick modes of the benchmark scripts, to keep them working (the full runs are not tests)."""


def test_train_step_quick(load_script, capsys):
    rows = load_script("benchmarks", "train_step").main(["--quick"])
    names = [r[0] for r in rows]
    assert names == ["SepViT-Lite", "MobileNetV2", "EfficientNetB0"]
    assert all(r[2] > 0 for r in rows)
    assert "SepViT-Lite / model" in capsys.readouterr().out


def test_edge_latency_quick(load_script, capsys):
    results = load_script("benchmarks", "edge_latency").main(["--quick"])
    assert {k[0] for k in results} == {"SepViT-Lite", "MobileNetV2", "EfficientNetB0"}
    assert {(k[1], k[2]) for k in results} == {(None, 1), (None, 2), ("int8", 1), ("int8", 2)}
    assert all(ms > 0 for ms in results.values())
    assert "SepViT-Lite / model" in capsys.readouterr().out


def test_onnx_latency_quick(load_script, capsys):
    results = load_script("benchmarks", "onnx_latency").main(["--quick"])
    assert set(results) == {(m, t) for m in ("SepViT-Lite", "PVTv2-b0") for t in (1, 2)}
    assert all(ms > 0 for ms in results.values())
    assert "| PVTv2-b0 | 3.7 |" in capsys.readouterr().out  # the peer has b0's size
