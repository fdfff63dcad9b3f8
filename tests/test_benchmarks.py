"""Quick modes of the benchmark scripts, to keep them working (the full runs are not tests)."""


def test_train_step_quick(load_script, capsys):
    rows = load_script("benchmarks", "train_step").main(["--quick"])
    names = [r[0] for r in rows]
    assert names == ["SepViT-Lite", "MobileNetV2", "EfficientNetB0"]
    assert all(r[2] > 0 for r in rows)
    assert "SepViT-Lite / model" in capsys.readouterr().out
