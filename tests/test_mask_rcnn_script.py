"""examples/train_detection.py --head mask_rcnn: instance masks in the detection pipelines
(COCO polygons and RLEs, digit scenes), segm evaluation of a source, refusals, a run and
its resume."""

import json
import os

import keras
import numpy as np
import pytest

pytest.importorskip("keras_hub")
mask_api = pytest.importorskip("pycocotools.mask")

from test_segmentation import TINY  # noqa: E402  (the one tiny SepViT backbone config)

from keras_sepvit.data import DataError, detection  # noqa: E402
from keras_sepvit.data.digit_scenes import instance_masks, make_digit_scenes  # noqa: E402
from keras_sepvit.hub import SepViTBackbone  # noqa: E402

HEIGHT, WIDTH = 8, 12


@pytest.fixture(scope="module")
def script(load_script):
    return load_script("examples", "train_detection")


def hand_made_masks():
    """The tiny example's four instances, pixel by pixel (8x12 image)."""
    masks = np.zeros((4, HEIGHT, WIDTH), "uint8")
    masks[0, 1:4, 1:5] = 1  # the polygon (1,1)-(5,1)-(5,4)-(1,4): pixels x 1..4, y 1..3
    masks[1, 2:6, 7] = 1  # the uncompressed RLE: column 7, rows 2..5
    masks[2, 5:8, 9:12] = 1  # the compressed RLE
    masks[3, 6:8, 0:3] = 1  # a crowd region (uncompressed RLE)
    return masks


def write_mask_folder(root, split="train", drop_segmentation=False):
    """One 8x12 image with a polygon, an uncompressed RLE, a compressed RLE and a crowd."""
    from PIL import Image

    folder = os.path.join(root, split)
    os.makedirs(folder)
    image = np.zeros((HEIGHT, WIDTH, 3), "uint8")
    image[..., 0] = 20 * np.arange(WIDTH)  # red grows rightwards: a flip shows
    Image.fromarray(image).save(os.path.join(folder, "a.png"))
    masks = hand_made_masks()
    compressed = mask_api.encode(np.asfortranarray(masks[2][..., None]))[0]["counts"].decode()
    segmentations = [
        [[1, 1, 5, 1, 5, 4, 1, 4]],
        {"size": [HEIGHT, WIDTH], "counts": [7 * HEIGHT + 2, 4, HEIGHT * WIDTH - 7 * HEIGHT - 6]},
        {"size": [HEIGHT, WIDTH], "counts": compressed},
        {"size": [HEIGHT, WIDTH], "counts": [6, 2, 6, 2, 6, 2, HEIGHT * WIDTH - 24]},
    ]
    boxes = [[1, 1, 4, 3], [7, 2, 1, 4], [9, 5, 3, 3], [0, 6, 3, 2]]  # x, y, w, h
    annotations = [
        {"id": n + 1, "image_id": 7, "category_id": 5 if n != 1 else 9, "bbox": box,
         "area": float(masks[n].sum()), "iscrowd": int(n == 3), "segmentation": seg}
        for n, (box, seg) in enumerate(zip(boxes, segmentations))
    ]  # fmt: skip
    if drop_segmentation:
        del annotations[1]["segmentation"]
    dataset = {
        "images": [{"id": 7, "file_name": "a.png"}],  # no height/width: read from the image
        "annotations": annotations,
        "categories": [{"id": 5, "name": "five"}, {"id": 9, "name": "nine"}],
    }
    path = os.path.join(folder, "annotations.json")
    with open(path, "w") as f:
        json.dump(dataset, f)
    return image, masks, path


def test_polygon_and_rle_masks_decode_and_move_with_the_image(tmp_path):
    _, masks, _ = write_mask_folder(tmp_path)
    source = detection.load_source(str(tmp_path), "train", masks=True)
    example = next(source.dataset.as_numpy_iterator())
    np.testing.assert_array_equal(example["masks"], masks)  # every format, exactly
    np.testing.assert_array_equal(example["crowd"], [False, False, False, True])
    # Shorter side 16 (x2, nearest: each pixel becomes 2x2), canvas 32, random flips.
    batches = detection.train_dataset(
        source, 1, 32, min_side=(16, 16), max_side=24, max_boxes=4, seed=0, masks=True
    )
    big = np.kron(masks[:3], np.ones((2, 2), "uint8"))  # the crowd is dropped
    seen = set()
    for images, targets in batches.take(8).as_numpy_iterator():
        flipped = images[0, 1, 0, 0] > images[0, 1, 23, 0]  # red grows leftwards
        seen.add(bool(flipped))
        expected = np.zeros((4, 32, 32), "uint8")
        expected[:3, :16, :24] = big[:, :, ::-1] if flipped else big
        assert targets["masks"].shape == (1, 4, 32, 32) and targets["masks"].dtype == np.uint8
        np.testing.assert_array_equal(targets["masks"][0], expected)
        np.testing.assert_array_equal(targets["labels"][0], [0, 1, 0, -1])
        for k in range(3):  # each box is its mask's box
            ys, xs = np.nonzero(expected[k])
            np.testing.assert_allclose(
                targets["boxes"][0, k], [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            )
    assert seen == {True, False}  # both cases were checked


def test_segmentation_problems_are_named_or_skipped(tmp_path, capsys):
    _, _, path = write_mask_folder(tmp_path, drop_segmentation=True)
    with pytest.raises(DataError) as raised:
        detection.load_source(str(tmp_path), "train", masks=True)
    message = str(raised.value)
    assert path in message and "annotation 2 of image 'a.png' (id 7)" in message
    assert "no 'segmentation'" in message and "--skip-invalid-annotations" in message
    source = detection.load_source(str(tmp_path), "train", skip_invalid_annotations=True,
                                   masks=True)  # fmt: skip
    assert "Skipped 1 invalid annotations" in capsys.readouterr().out
    assert len(next(source.dataset.as_numpy_iterator())["masks"]) == 3
    detection.load_source(str(tmp_path), "train")  # RetinaNet does not need masks
    with open(path) as f:
        data = json.load(f)
    bad = [
        ({"size": [4, 4], "counts": [16]}, "size \\[4, 4\\] is not the image's \\[8, 12\\]"),
        ({"size": [8, 12], "counts": [10, 4]}, "summing to 96 pixels"),
        ({"size": [8, 12], "counts": "0`"}, "covers 1584 pixels|damaged"),
        ([[1, 1, 5, 1]], "no polygon of 3 or more points"),
    ]
    for segmentation, match in bad:
        data["annotations"][1]["segmentation"] = segmentation
        with open(path, "w") as f:
            json.dump(data, f)
        with pytest.raises(DataError, match=match):
            detection.load_source(str(tmp_path), "train", masks=True)


def test_digit_scenes_carry_their_instance_masks():
    source = detection.digit_scene_source("train", 3, seed=4, masks=True)
    scenes = make_digit_scenes(3, (128, 128), (1, 4), (2, 4), split="train", seed=4)
    for n, example in enumerate(source.dataset.as_numpy_iterator()):
        np.testing.assert_array_equal(example["masks"], instance_masks(scenes, n))
        np.testing.assert_array_equal(example["boxes"], scenes["boxes"][n])
    assert len(source.coco_gt.getAnnIds()) == sum(len(b) for b in scenes["boxes"])
    assert "masks" not in next(detection.digit_scene_source("train", 3).dataset.take(1).__iter__())


def test_segm_evaluation_of_a_source_scores_the_truth_one(tmp_path):
    """Ground-truth 'detections' at the network's scale (x2, padded) score 1 on boxes and
    masks: labels map back to the file's category ids, masks to the original size."""
    from keras_sepvit.tasks.coco_mask_eval import evaluate_instance_source

    write_mask_folder(tmp_path, "val")
    source = detection.load_source(str(tmp_path), "val", masks=True)
    examples = detection.eval_dataset(source, 32, 16, 24)
    masks = np.kron(hand_made_masks()[:3], np.ones((2, 2), "uint8"))

    def oracle(images, training=False):
        found = np.zeros((len(images), 3, 32, 32), "uint8")
        found[:, :, :16, :24] = masks
        boxes = [[2, 2, 10, 8], [14, 4, 16, 12], [18, 10, 24, 16]]
        return {
            "boxes": np.tile(np.asarray(boxes, "float32"), (len(images), 1, 1)),
            "classes": np.tile([0, 1, 0], (len(images), 1)),
            "scores": np.ones((len(images), 3), "float32"),
            "num_detections": np.full(len(images), 3),
            "masks": found,
        }

    metrics = evaluate_instance_source(oracle, source, examples)
    assert metrics["bbox"]["map"] == pytest.approx(1.0)
    assert metrics["segm"]["map"] == pytest.approx(1.0)


def test_tfds_coco_is_refused_before_any_work(script, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as raised:
        script.main(["--head", "mask_rcnn", "--dataset", "coco/2017", "--out", str(out)])
    message = str(raised.value)
    assert message.startswith("error: tfds 'coco/2017' has no instance masks")
    assert "\n" not in message  # one line
    assert "DIR/train/annotations.json" in message and "instances_train2017.json" in message
    assert not out.exists()


def test_recipe_defaults_per_head(script):
    retinanet = script.parse_args([])
    assert (retinanet.head, retinanet.lr, retinanet.anchor_size) == ("retinanet", 1e-4, 4.0)
    mask = script.parse_args(["--head", "mask_rcnn"])
    assert (mask.lr, mask.anchor_size, mask.proposals, mask.epochs) == (2e-4, 8.0, 1000, 12)
    assert mask.lr_steps == [8, 11] and mask.warmup_steps == 500 and mask.batch_size == 16
    digits = script.parse_args(["--head", "mask_rcnn", "--digit-scenes", "--lr", "1e-3"])
    assert (digits.lr, digits.anchor_size, digits.proposals) == (1e-3, 4.0, 256)


@pytest.mark.slow  # about 45 s on 2 cores: two short runs, each tracing the train step
def test_digit_scenes_run_checkpoints_logs_mask_map_and_resumes(script, tmp_path, capsys):
    from keras_sepvit import training

    preset = str(tmp_path / "tiny_sepvit")
    keras.utils.set_random_seed(0)
    SepViTBackbone(**TINY).save_to_preset(preset)
    out = tmp_path / "run"
    run = [
        "--head", "mask_rcnn", "--digit-scenes", "--scenes", "16", "--out", str(out),
        "--backbone", preset, "--batch-size", "2", "--steps-per-epoch", "2", "--epochs", "1",
        "--warmup-steps", "1", "--lr-steps", "", "--head-width", "16", "--proposals", "64",
        "--val-images", "4", "--eval-batch-size", "4",
    ]  # fmt: skip
    state = script.main(run)
    assert state["monitor"] == "val_mask_map" and state["epoch"] == 0
    for key in ("val_map", "val_map50", "val_mask_map", "val_mask_map50"):
        assert 0.0 <= state["logs"][key] <= 1.0
    assert (out / training.CHECKPOINT / "state.json").exists()
    assert "mask mAP" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--head: run mask_rcnn, now retinanet"):
        script.main([*run, "--resume", "--head", "retinanet"])
    state = script.main([*run, "--resume", "--epochs", "2"])
    assert "Resuming at epoch 2" in capsys.readouterr().out
    assert state["epoch"] == 1 and state["iterations"] == 4
    assert [row["epoch"] for row in state["history"]] == [0, 1]


def test_head_is_a_setting_and_old_retinanet_runs_resume(tmp_path):
    """A run stored before --head (no "head" in its settings) resumes as RetinaNet without
    --head and its flags compared; with --head mask_rcnn, and for newer runs, they count."""
    from keras_sepvit.tasks.detection_recipes import HEAD_FLAGS, ignored_settings
    from keras_sepvit.training.settings import write_settings

    write_settings(str(tmp_path), {"lr": 1e-4, "anchor_size": 4.0})
    assert ignored_settings(str(tmp_path), "retinanet") == HEAD_FLAGS
    assert ignored_settings(str(tmp_path), "mask_rcnn") == ()
    assert ignored_settings(None, "retinanet") == ()
    write_settings(str(tmp_path), {"head": "retinanet", "lr": 1e-4})
    assert ignored_settings(str(tmp_path), "retinanet") == ()
