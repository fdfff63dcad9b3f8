"""The dense-prediction demo (examples/dense_demo.py) runs end to end and reports."""

import json

import pytest


@pytest.mark.slow
def test_dense_demo_quick_writes_table_report_and_picture(tmp_path, load_script, capsys):
    out = tmp_path / "dense"
    code = load_script("examples", "dense_demo").main(["--quick", "--out", str(out)])
    assert code == 0  # --quick never fails on the floor
    printed = capsys.readouterr().out
    assert "| sepvit_lite |" in printed and "| mit_b0 |" in printed
    report = json.loads((out / "report.json").read_text())
    assert [r["backbone"] for r in report["detection"]] == ["sepvit_lite", "mit_b0"]
    assert [r["backbone"] for r in report["segmentation"]] == ["sepvit_lite", "mit_b0"]
    for row in report["detection"]:
        assert 0.0 <= row["map50"] <= 1.0 and 0.0 <= row["map"] <= row["map50"]
    for row in report["segmentation"]:
        assert 0.0 <= row["miou"] <= 1.0
    assert set(report["floor_met"]) == {"map50", "miou"}
    assert (out / "predictions.png").stat().st_size > 10_000
    assert "predictions.png" in (out / "report.md").read_text()
