"""Detection and segmentation folders are checked when loaded (issue 17, item 9).

COCO-JSON annotations that cannot be trained on (no bbox, a box of width or
height <= 0, outside the image, not finite, an unknown category), label
maps holding values that are not classes, and images that do not decode
are refused with a `DataError` naming the file (and for annotations the
image and annotation id), or skipped with a printed count under a flag; the
scripts turn the refusal into one line and exit status 1.
"""

import json
import os

import numpy as np
import pytest

pytest.importorskip("pycocotools")

from test_detection_script import small_run, write_coco_folder  # noqa: E402
from test_segmentation_script import LIGHT, TINY, _write_folder  # noqa: E402

from keras_sepvit.data import DataError, detection  # noqa: E402
from keras_sepvit.data import segmentation as sd  # noqa: E402

# write_coco_folder: images 100.. ("0000.png", ...) of 48x64 pixels, annotations 1..


def _coco_folder(tmp_path, count=2):
    root = tmp_path / "coco"
    path = write_coco_folder(root, "train", count, seed=0)
    with open(path) as f:
        return str(root), path, json.load(f)


def _rewrite(path, data):
    with open(path, "w") as f:
        json.dump(data, f)  # NaN and Infinity as JSON's usual extension (json.load reads them)


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _first_annotation(data):
    """The first annotation of image 100 ("0000.png")."""
    return next(a for a in data["annotations"] if a["image_id"] == 100)


BAD_ANNOTATIONS = {
    "negative width": (lambda a: a["bbox"].__setitem__(2, -3.0), "width or height <= 0"),
    "zero height": (lambda a: a["bbox"].__setitem__(3, 0.0), "width or height <= 0"),
    "right of the image": (lambda a: a.update(bbox=[60.0, 10.0, 20.0, 10.0]), "outside the image"),
    "above the image": (lambda a: a.update(bbox=[10.0, -30.0, 10.0, 10.0]), "outside the image"),
    "xyxy, not xywh": (lambda a: a.update(bbox=[30.0, 30.0, 60.0, 45.0]), "outside the image"),
    "nan": (lambda a: a["bbox"].__setitem__(0, float("nan")), "not finite"),
    "inf": (lambda a: a["bbox"].__setitem__(2, float("inf")), "not finite"),
    "no bbox": (lambda a: a.pop("bbox"), "no 'bbox'"),
    "bbox null": (lambda a: a.update(bbox=None), "not [x, y, width, height]"),
    "three numbers": (lambda a: a.update(bbox=[1.0, 2.0, 3.0]), "not [x, y, width, height]"),
    "unknown category": (lambda a: a.update(category_id=99), "category_id 99 is not in"),
    "no category": (lambda a: a.pop("category_id"), "category_id None is not in"),
}


@pytest.mark.parametrize("kind", list(BAD_ANNOTATIONS))
def test_invalid_annotation_is_refused_naming_file_image_and_id(tmp_path, kind):
    root, path, data = _coco_folder(tmp_path)
    damage, phrase = BAD_ANNOTATIONS[kind]
    annotation = _first_annotation(data)
    damage(annotation)
    _rewrite(path, data)
    with pytest.raises(DataError) as refused:
        detection.load_source(root, "train")
    message = str(refused.value)
    assert path in message and "image '0000.png' (id 100)" in message
    assert f"annotation {annotation['id']} " in message and phrase in message
    assert "--skip-invalid-annotations" in message and "\n" not in message


def test_box_within_the_tolerance_is_kept_clipped_to_the_image(tmp_path):
    root, path, data = _coco_folder(tmp_path, count=1)
    _first_annotation(data)["bbox"] = [-1.5, 40.0, 65.5, 9.5]  # 1.5 px past left, right, bottom
    _rewrite(path, data)
    boxes = next(iter(detection.load_source(root, "train").dataset))["boxes"].numpy()
    assert boxes.min() >= 0 and boxes[:, 0::2].max() <= 64 and boxes[:, 1::2].max() <= 48
    np.testing.assert_allclose(boxes[0], [0, 40, 64, 48])


def test_skip_invalid_annotations_counts_them_and_leaves_them_out(tmp_path, capsys):
    root, path, data = _coco_folder(tmp_path)
    total = len(data["annotations"])
    bad = data["annotations"][0], data["annotations"][-1]
    bad[0].pop("bbox")
    bad[1]["bbox"][2] = -1.0
    _rewrite(path, data)
    source = detection.load_source(root, "train", skip_invalid_annotations=True)
    assert f"Skipped 2 invalid annotations of {path}" in capsys.readouterr().out
    assert sum(len(e["labels"]) for e in source.dataset) == total - 2
    kept = set(source.coco_gt.getAnnIds())  # evaluation's ground truth: without them too
    assert len(kept) == total - 2 and not kept & {a["id"] for a in bad}


def test_unreadable_detection_image_named_or_skipped(tmp_path, capsys):
    root, path, data = _coco_folder(tmp_path, count=3)
    bad = os.path.join(root, "train", "images", "0001.png")
    _truncate(bad)
    with pytest.raises(DataError, match="1 of 3 files.*do not decode.*--skip-unreadable") as e:
        detection.load_source(root, "train")
    assert bad in str(e.value)
    source = detection.load_source(root, "train", skip_unreadable=True)
    assert "Skipped 1 unreadable files" in capsys.readouterr().out
    assert source.num_examples == 2 and len(list(source.dataset)) == 2
    assert sorted(source.coco_gt.getImgIds()) == [100, 102]


def _seg_folder(tmp_path, count=3):
    root = str(tmp_path / "ade")
    _write_folder(root, "training", count)  # images img<i>.jpg, label maps with values 0..3
    return root


def _set_pixel(path, value):
    from PIL import Image

    label = np.array(Image.open(path))
    label[3, 5] = value
    Image.fromarray(label).save(path)


@pytest.mark.parametrize(
    "value, reduce_zero_label, refused",
    [(7, False, True), (4, False, True), (255, False, False), (4, True, False), (5, True, True)],
)
def test_label_value_that_is_not_a_class_is_refused_naming_the_map(
    tmp_path, value, reduce_zero_label, refused
):
    root = _seg_folder(tmp_path)
    mask = os.path.join(root, "annotations", "training", "img1.png")
    _set_pixel(mask, value)
    load = dict(num_classes=4, reduce_zero_label=reduce_zero_label)
    if not refused:  # 255 is ignored; with reduce_zero_label 1..4 are the classes
        assert sd.load_split(root, "training", **load).num_examples == 3
        return
    with pytest.raises(DataError, match="1 of 3 label maps") as e:
        sd.load_split(root, "training", **load)
    assert f"{mask} holds [{value}]" in str(e.value) and "--num-classes" in str(e.value)


def test_reduce_zero_label_keeps_the_ignore_value():
    labels = sd._labels(np.array([[0, 1, 4, 255]], "uint8"), reduce_zero_label=True)
    assert labels.numpy().tolist() == [[255, 0, 3, 255]]  # mmseg's reduce_zero_label


@pytest.mark.parametrize("damaged", ["images/training/img1.jpg", "annotations/training/img2.png"])
def test_unreadable_segmentation_file_named_or_skipped(tmp_path, damaged, capsys):
    root = _seg_folder(tmp_path)
    bad = os.path.join(root, *damaged.split("/"))
    with open(bad, "wb") as f:
        f.write(b"not an image")
    with pytest.raises(DataError, match="1 of 6 files.*--skip-unreadable") as e:
        sd.load_split(root, "training")
    assert bad in str(e.value)
    split = sd.load_split(root, "training", num_classes=4, skip_unreadable=True)
    assert "Skipped 1 unreadable files" in capsys.readouterr().out
    assert split.num_examples == 2 and len(list(split.dataset)) == 2


def _one_line_error(refused, *named):
    message = refused.value.code  # a str code: Python prints it and exits with status 1
    assert isinstance(message, str) and message.startswith("error: ") and "\n" not in message
    for name in named:
        assert name in message


def test_detection_script_refuses_in_one_line(tmp_path, load_script):
    script = load_script("examples", "train_detection")
    root, path, data = _coco_folder(tmp_path)
    write_coco_folder(root, "val", 1, seed=1)
    _first_annotation(data).pop("bbox")
    _rewrite(path, data)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as refused:
        script.main(small_run(root, out, "unused"))
    _one_line_error(refused, path, "'0000.png' (id 100)", "--skip-invalid-annotations")
    _truncate(os.path.join(root, "train", "images", "0001.png"))
    with pytest.raises(SystemExit) as refused:
        script.main(small_run(root, out, "unused", "--skip-invalid-annotations"))
    _one_line_error(refused, "0001.png", "--skip-unreadable")


def test_segmentation_script_refuses_in_one_line(tmp_path, load_script, monkeypatch):
    from keras_sepvit.demos import backbones
    from keras_sepvit.hub import SepViTBackbone

    monkeypatch.setattr(backbones, "build_backbone", lambda name, size, **k: SepViTBackbone(**TINY))
    script = load_script("examples", "train_segmentation")
    root = _seg_folder(tmp_path)
    _write_folder(root, "validation", 2)
    mask = os.path.join(root, "annotations", "training", "img0.png")
    _set_pixel(mask, 9)
    argv = [
        "--dataset", root, "--train-split", "training", "--val-split", "validation",
        "--num-classes", "4", "--iterations", "1", "--out", str(tmp_path / "run"), *LIGHT,
    ]  # fmt: skip
    with pytest.raises(SystemExit) as refused:
        script.main(argv)
    _one_line_error(refused, mask, "holds [9]")


def test_bad_segmentation_data_refused_before_overwrite_deletes_the_run(
    tmp_path, load_script, monkeypatch
):
    """--overwrite on a run with bad data: refused, and the old run is still whole."""
    from keras_sepvit.demos import backbones
    from keras_sepvit.hub import SepViTBackbone

    monkeypatch.setattr(backbones, "build_backbone", lambda name, size, **k: SepViTBackbone(**TINY))
    script = load_script("examples", "train_segmentation")
    root = _seg_folder(tmp_path)
    _write_folder(root, "validation", 2)
    run = tmp_path / "run"
    (run / "checkpoint").mkdir(parents=True)  # an earlier run's files, as they are
    (run / "log.csv").write_text("epoch,loss\n0,1.0\n")
    before = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    mask = os.path.join(root, "annotations", "training", "img0.png")
    _set_pixel(mask, 9)
    argv = [
        "--dataset", root, "--train-split", "training", "--val-split", "validation",
        "--num-classes", "4", "--iterations", "1", "--out", str(run), "--overwrite", *LIGHT,
    ]  # fmt: skip
    with pytest.raises(SystemExit) as refused:
        script.main(argv)
    _one_line_error(refused, mask, "holds [9]")
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == before
    assert (run / "log.csv").read_text() == "epoch,loss\n0,1.0\n"
