"""The dense-prediction demo (examples/dense_demo.py) runs end to end and reports."""

import json

import pytest


@pytest.mark.slow
def test_dense_demo_quick_writes_table_report_and_picture(tmp_path, load_script, capsys):
    out = tmp_path / "dense"
    code = load_script("examples", "dense_demo").main(["--quick", "--out", str(out)])
    assert code == 0  # --quick never fails on the floor
    printed = capsys.readouterr().out
    assert "| head | metric | sepvit_lite | mit_b0 | train (s) |" in printed
    for line in ("| RetinaNet | box mAP@0.5 |", "| Mask R-CNN | mask mAP@0.5 |",
                 "| Semantic FPN | mIoU |", "| UperNet | mIoU |"):  # fmt: skip
        assert line in printed
    report = json.loads((out / "report.json").read_text())
    for head in ("retinanet", "mask_rcnn", "semantic_fpn", "upernet"):
        assert [r["backbone"] for r in report[head]] == ["sepvit_lite", "mit_b0"], head
    for row in report["retinanet"]:
        assert 0.0 <= row["map50"] <= 1.0 and 0.0 <= row["map"] <= row["map50"]
    for row in report["mask_rcnn"]:
        assert 0.0 <= row["mask_map"] <= row["mask_map50"] <= 1.0
        assert 0.0 <= row["box_map50"] <= 1.0
    for head in ("semantic_fpn", "upernet"):
        assert all(0.0 <= row["miou"] <= 1.0 and row["head"] == head for row in report[head])
    assert set(report["floor_met"]) == {"map50", "mask_map50", "miou", "upernet_miou_vs_fpn"}
    assert (out / "predictions.png").stat().st_size > 10_000
    assert "predictions.png" in (out / "report.md").read_text()


def test_floors_and_table_read_sepvit_lite_rows():
    from keras_sepvit.demos import dense_report

    def rows(**scores):
        return [{"backbone": b, "seconds": 1.0, **scores} for b in ("sepvit_lite", "mit_b0")]

    results = {
        "retinanet": rows(map50=0.7, map=0.4),
        "mask_rcnn": rows(box_map50=0.8, mask_map50=0.49, mask_map=0.3),
        "semantic_fpn": rows(miou=0.70),
        "upernet": rows(miou=0.675),
    }
    met = dense_report.floors_met(results)
    # mask mAP@0.5 0.49 < 0.5; UperNet 0.675 is 0.025 below Semantic FPN's 0.70
    assert met == {"map50": True, "mask_map50": False, "miou": True, "upernet_miou_vs_fpn": False}
    results["upernet"] = rows(miou=0.685)
    assert dense_report.floors_met(results)["upernet_miou_vs_fpn"]
    table = dense_report.format_table(results)
    assert "| Mask R-CNN | mask mAP@0.5 | 0.490 | 0.490 | 1 / 1 |" in table
