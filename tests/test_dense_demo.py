"""examples/dense_demo.py: its orchestration, table, floors, report and picture."""

import json

import pytest

# Scores the stand-ins report, SepViT-Lite first: under every floor, so that
# --quick's exit code and "NOT met" line are checked too.
SCORES = {
    "sepvit_lite": dict(map50=0.41, map=0.21, box_map50=0.42, box_map=0.22, mask_map50=0.43,
                        mask_map=0.23, miou=0.44),
    "mit_b0": dict(map50=0.31, map=0.11, box_map50=0.32, box_map=0.12, mask_map50=0.33,
                   mask_map=0.13, miou=0.34),
}  # fmt: skip


def _untrained_models():
    """The demo's four model types, tiny and untrained, for the picture."""
    from test_mask_rcnn import tiny_mask_rcnn
    from test_segmentation import TINY, tiny_segmenter
    from test_upernet import tiny_segmenter as tiny_upernet

    from keras_sepvit.data.digit_scenes import NUM_CLASSES, NUM_MASK_CLASSES
    from keras_sepvit.hub import SepViTBackbone
    from keras_sepvit.tasks.retinanet import sepvit_retinanet

    shape = (64, 64, 3)
    return {
        "retinanet": sepvit_retinanet(
            SepViTBackbone(**TINY, image_shape=shape), NUM_CLASSES, head_conv_layers=1, seed=0
        ),
        "mask_rcnn": tiny_mask_rcnn(shape, NUM_CLASSES),
        "semantic_fpn": tiny_segmenter(NUM_MASK_CLASSES, shape),
        "upernet": tiny_upernet(NUM_MASK_CLASSES, shape),
    }  # fmt: skip


@pytest.mark.slow
def test_dense_demo_quick_trains_both_backbones_alike_and_reports(
    tmp_path, load_script, capsys, monkeypatch
):
    """The script's own work: every head trained on both backbones with the same
    data and budget, then the table, floors, report and picture.

    The three training functions are stand-ins that record their calls and
    return untrained tiny models: each is run for real in its own test
    (test_detection's detector contract, test_instances_demo, and
    test_segmentation's demo runs with both heads), where xdist can spread them.
    Eight real trainings here cost about 7 minutes, almost all of it tracing.
    """
    from keras_sepvit.demos import detection, instances, segmentation

    models = _untrained_models()
    calls = {head: [] for head in models}

    def stand_in(head):
        def train(name, *data, **budget):
            calls[head].append((name, data, budget))
            row = {"backbone": name, "model": models[head], **SCORES[name]}
            if head in ("semantic_fpn", "upernet"):
                return {**row, "head": head, "train_seconds": 2.0, "steps": budget["steps"]}
            return {**row, "seconds": 1.0}

        return train

    monkeypatch.setattr(detection, "train_and_evaluate_detector", stand_in("retinanet"))
    monkeypatch.setattr(instances, "train_and_evaluate", stand_in("mask_rcnn"))

    def segment(name, data, head, **budget):
        return stand_in(head)(name, data, **budget)

    monkeypatch.setattr(segmentation, "train_and_evaluate", segment)
    out = tmp_path / "dense"
    code = load_script("examples", "dense_demo").main(["--quick", "--out", str(out)])
    assert code == 0  # --quick never fails on the floor
    for head, made in calls.items():
        assert [name for name, _, _ in made] == ["sepvit_lite", "mit_b0"], head
        (_, data_a, budget_a), (_, data_b, budget_b) = made
        assert budget_a == budget_b, head  # the same budget ...
        assert all(a is b for a, b in zip(data_a, data_b)), head  # ... and the same scenes
    retinanet_scenes, mask_rcnn_scenes = calls["retinanet"][0][1], calls["mask_rcnn"][0][1]
    assert all(a is b for a, b in zip(retinanet_scenes, mask_rcnn_scenes))  # one set of scenes
    printed = capsys.readouterr().out
    assert "| head | metric | sepvit_lite | mit_b0 | train (s) |" in printed
    for line in (
        "| RetinaNet | box mAP@0.5 | 0.410 | 0.310 | 1 / 1 |",
        "| Mask R-CNN | mask mAP@0.5 | 0.430 | 0.330 | 1 / 1 |",
        "| Semantic FPN | mIoU | 0.440 | 0.340 | 2 / 2 |",
        "| UperNet | mIoU | 0.440 | 0.340 | 2 / 2 |",
    ):
        assert line in printed
    assert "Floor (" in printed and "NOT met" in printed and "--quick" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["quick"] is True
    for head in ("retinanet", "mask_rcnn", "semantic_fpn", "upernet"):
        rows = report[head]
        assert [r["backbone"] for r in rows] == ["sepvit_lite", "mit_b0"], head
        assert "model" not in rows[0]
    assert report["mask_rcnn"][0]["mask_map"] == 0.23
    assert [r["head"] for r in report["upernet"]] == ["upernet"] * 2
    # UperNet 0.44 = Semantic FPN 0.44: that floor is met; the absolute ones are not
    assert report["floor_met"] == {
        "map50": False, "mask_map50": False, "miou": False, "upernet_miou_vs_fpn": True
    }  # fmt: skip
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
