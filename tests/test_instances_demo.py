"""The Mask R-CNN digit-scenes demo (`keras_sepvit.demos.instances`), trained for real."""

import pytest

pytest.importorskip("keras_hub")

from test_segmentation import TINY  # noqa: E402

from keras_sepvit.data.digit_scenes import make_digit_scenes  # noqa: E402
from keras_sepvit.demos import detection, instances  # noqa: E402
from keras_sepvit.hub import SepViTBackbone  # noqa: E402
from keras_sepvit.tasks.mask_rcnn import MaskRCNN  # noqa: E402


@pytest.mark.slow
def test_train_and_evaluate_trains_and_scores_boxes_and_masks(monkeypatch):
    """What examples/dense_demo.py reads from it: the pycocotools scores, the
    times, the history and the trained model (the demo's head, tiny backbone)."""
    built = []

    def tiny_backbone(name, image_size, seed=None):
        built.append((name, tuple(image_size), seed))
        return SepViTBackbone(**TINY, image_shape=(*image_size, 3))

    monkeypatch.setattr(instances, "build_backbone", tiny_backbone)
    train = make_digit_scenes(16, **detection.SCENES, split="train", seed=0)
    test = make_digit_scenes(8, **detection.SCENES, split="test", seed=1)
    row = instances.train_and_evaluate("sepvit_lite", train, test, epochs=2, batch_size=8, seed=3)
    assert built == [("sepvit_lite", (64, 64), 3)]
    assert row["backbone"] == "sepvit_lite" and isinstance(row["model"], MaskRCNN)
    assert 0.0 <= row["mask_map"] <= row["mask_map50"] <= 1.0
    assert 0.0 <= row["box_map"] <= row["box_map50"] <= 1.0
    assert set(row["metrics"]) == {"bbox", "segm"}
    assert row["metrics"]["segm"]["map50"] == row["mask_map50"]
    assert row["seconds"] > 0 and row["eval_seconds"] > 0
    assert len(row["history"]["loss"]) == 2
    assert row["params"] > row["backbone_params"] > 0


def test_train_and_evaluate_refuses_fewer_scenes_than_a_batch():
    scenes = make_digit_scenes(4, **detection.SCENES, split="train", seed=0)
    with pytest.raises(ValueError, match="batch_size=16"):
        instances.train_and_evaluate("sepvit_lite", scenes, scenes)
