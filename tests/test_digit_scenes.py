"""Digit scenes: layouts, masks that match boxes, disjoint held-out scans, errors."""

import numpy as np
import pytest

pytest.importorskip("sklearn")

from keras_sepvit.data import digit_scenes  # noqa: E402


def test_layouts_and_masks_match_boxes():
    scenes = digit_scenes.make_digit_scenes(12, image_size=(64, 80), digit_scale=(3, 4), seed=3)
    assert scenes["images"].shape == (12, 64, 80, 3) and scenes["images"].dtype == np.uint8
    assert scenes["masks"].shape == (12, 64, 80) and scenes["masks"].max() <= 10
    for image_boxes, labels, mask in zip(scenes["boxes"], scenes["labels"], scenes["masks"]):
        assert len(image_boxes) == len(labels) >= 1
        inside = np.zeros(mask.shape, bool)
        for (x0, y0, x1, y1), label in zip(image_boxes.astype(int), labels):
            region = mask[y0:y1, x0:x1]
            # The box is tight around the digit's strokes, labelled 1 + digit.
            assert set(np.unique(region)) <= {0, label + 1}
            assert (region[0] > 0).any() and (region[-1] > 0).any()
            assert (region[:, 0] > 0).any() and (region[:, -1] > 0).any()
            inside[y0:y1, x0:x1] = True
        assert not mask[~inside].any()  # no stroke outside a box


def test_instance_masks_are_each_digit_in_box_order():
    scenes = digit_scenes.make_digit_scenes(12, image_size=(64, 80), digit_scale=(2, 3), seed=4)
    for n, (image_boxes, labels) in enumerate(zip(scenes["boxes"], scenes["labels"])):
        masks = digit_scenes.instance_masks(scenes, n)
        assert masks.shape == (len(image_boxes), 64, 80) and masks.dtype == bool
        assert (masks.sum(axis=0) <= 1).all()  # no pixel in two digits
        # Together they are the class mask's strokes, each labelled as its box's digit.
        np.testing.assert_array_equal(masks.any(axis=0), scenes["masks"][n] > 0)
        for mask, (x0, y0, x1, y1), label in zip(masks, image_boxes.astype(int), labels):
            rows, cols = np.nonzero(mask)
            assert (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1) == (x0, y0, x1, y1)
            assert (scenes["masks"][n][mask] == label + 1).all()


def test_seeded_and_held_out_scans_are_disjoint():
    a = digit_scenes.make_digit_scenes(4, seed=1)
    b = digit_scenes.make_digit_scenes(4, seed=1)
    np.testing.assert_array_equal(a["images"], b["images"])
    train, _ = digit_scenes._digit_scans("train")
    test, _ = digit_scenes._digit_scans("test")
    train_set = {scan.tobytes() for scan in train}
    assert not any(scan.tobytes() in train_set for scan in test)


def test_pad_boxes_layout():
    padded = digit_scenes.pad_boxes(
        [np.ones((2, 4), "float32"), np.zeros((0, 4), "float32")],
        [np.array([3, 4]), np.array([], "int32")],
        max_boxes=3,
    )
    assert padded["boxes"].shape == (2, 3, 4)
    np.testing.assert_array_equal(padded["labels"], [[3, 4, -1], [-1, -1, -1]])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(split="val"), "split='val'"),
        (dict(digit_scale=(3, 2)), "digit_scale=\\(3, 2\\)"),
        (dict(image_size=(16, 16)), "image_size=\\(16, 16\\)"),
        (dict(digits_per_scene=(0, 2)), "digits_per_scene=\\(0, 2\\)"),
    ],
)
def test_bad_arguments_name_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        digit_scenes.make_digit_scenes(2, **kwargs)
