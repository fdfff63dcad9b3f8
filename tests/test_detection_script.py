"""examples/train_detection.py and keras_sepvit.data.detection: COCO-JSON folders, tfds
(mock data), COCO evaluation of a source, refusals, resume."""

import json
import os

import keras
import numpy as np
import pytest

pytest.importorskip("keras_hub")
pytest.importorskip("pycocotools")

from test_segmentation import TINY  # noqa: E402  (the one tiny SepViT backbone config)

from keras_sepvit.data import detection  # noqa: E402
from keras_sepvit.data.digit_scenes import make_digit_scenes  # noqa: E402
from keras_sepvit.hub import SepViTBackbone  # noqa: E402


@pytest.fixture(scope="module")
def script(load_script):
    return load_script("examples", "train_detection")


@pytest.fixture(scope="module")
def backbone_preset(tmp_path_factory):
    """A tiny SepViT backbone saved as a keras-hub preset folder (fast tests)."""
    folder = str(tmp_path_factory.mktemp("preset") / "tiny_sepvit")
    keras.utils.set_random_seed(0)
    SepViTBackbone(**TINY).save_to_preset(folder)
    return folder


def write_coco_folder(root, split, count, seed, category_ids=(11, 22, 33)):
    """Digit scenes (48x64, digits 0-2 only) as a COCO-JSON split folder."""
    from PIL import Image

    folder = os.path.join(root, split)
    os.makedirs(os.path.join(folder, "images"))
    scenes = make_digit_scenes(count, (48, 64), digit_scale=(2, 2), split="train", seed=seed)
    images, annotations = [], []
    for n in range(count):
        name = f"{n:04d}.png"
        Image.fromarray(scenes["images"][n]).save(os.path.join(folder, "images", name))
        images.append({"id": 100 + n, "file_name": name, "height": 48, "width": 64})
        for box, label in zip(scenes["boxes"][n], scenes["labels"][n]):
            x0, y0, x1, y1 = (float(v) for v in box)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": 100 + n,
                    "category_id": category_ids[int(label) % 3],
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                }
            )
    categories = [{"id": c, "name": f"digit{c}"} for c in category_ids]
    path = os.path.join(folder, "annotations.json")
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return path


def small_run(dataset, out, preset, *extra):
    return [
        "--dataset", str(dataset), "--out", str(out), "--backbone", preset,
        "--batch-size", "2", "--steps-per-epoch", "2", "--epochs", "1",
        "--min-side", "64", "--max-side", "64", "--head-conv-layers", "1",
        "--warmup-steps", "1", "--lr-steps", "", "--lr", "1e-3", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def folder_run(script, backbone_preset, tmp_path_factory):
    """One epoch on a COCO-JSON folder: (root, out, state, printed output)."""
    import contextlib
    import io

    root = tmp_path_factory.mktemp("coco")
    write_coco_folder(root, "train", 6, seed=0)
    write_coco_folder(root, "val", 3, seed=1)
    out = root / "run"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        state = script.main(small_run(root, out, backbone_preset))
    return root, out, state, printed.getvalue()


@pytest.mark.slow
def test_coco_folder_trains_evaluates_and_refuses_to_overwrite(script, backbone_preset, folder_run):
    from keras_sepvit import training

    root, out, state, printed = folder_run
    assert "COCO mAP" in printed and "on 'val'" in printed
    assert state["epoch"] == 0 and state["monitor"] == "val_map"
    assert 0.0 <= state["logs"]["val_map"] <= 1.0 and "val_map50" in state["logs"]
    with open(out / training.LOG) as f:
        assert f.readline().strip().split(",")[-2:] == ["val_map", "val_map50"]

    with pytest.raises(SystemExit, match="already holds a training run.*--resume"):
        script.main(small_run(root, out, backbone_preset))


@pytest.mark.slow
def test_coco_folder_resume(script, backbone_preset, folder_run, capsys):
    root, out, _, _ = folder_run
    state = script.main(small_run(root, out, backbone_preset, "--resume", "--epochs", "2"))
    assert "Resuming at epoch 2" in capsys.readouterr().out
    assert state["epoch"] == 1 and state["iterations"] == 4
    assert [row["epoch"] for row in state["history"]] == [0, 1]


def test_init_from_a_classifier(script, backbone_preset, folder_run, tmp_path, capsys):
    """--init-from copies a SepViT classifier into the backbone (the paper's
    ImageNet initialisation) and reports what is new."""
    import keras_sepvit

    root, _, _, _ = folder_run
    keras.utils.set_random_seed(3)
    classifier = keras_sepvit.SepViT(**TINY, include_top=True, classes=4, weights=None)
    path = str(tmp_path / "classifier.keras")
    classifier.save(path)
    run = small_run(root, tmp_path / "run", backbone_preset, "--init-from", path)
    args = script.parse_args(run)
    detector = script.build_detector(args, 3)
    assert "New (initialised as the authors' _init_weights)" in capsys.readouterr().out
    encoder = detector.backbone.image_encoder
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(encoder.get_layer("stage1_embed_conv").kernel),
        keras.ops.convert_to_numpy(classifier.get_layer("stage1_embed_conv").kernel),
    )
    args.init_from = str(tmp_path / "missing.keras")
    with pytest.raises(SystemExit, match="--init-from .*missing.keras"):
        script.build_detector(args, 3)


def test_evaluation_maps_categories_back_to_the_files_ids(tmp_path):
    """Perfect 'detections' through the COCO evaluation of a source score 1: the
    label -> category id mapping and the rescaling to the original size are right."""
    from keras_sepvit.tasks import coco_eval

    root = tmp_path / "coco"
    write_coco_folder(root, "val", 3, seed=1)
    source = detection.load_source(str(root), "val")
    assert source.category_ids == [11, 22, 33]
    # What `--min-side 96 --max-side 128` evaluates on.
    examples = detection.eval_dataset(source, detection.canvas_side(128), 96, 128)

    class Oracle:
        """Returns the ground truth, scaled as the pipeline scales images (x1.5)."""

    def oracle_detect(detector, images, batch_size):
        rows = [e for e in examples.as_numpy_iterator()]
        rows = rows[oracle_detect.start : oracle_detect.start + len(images)]
        oracle_detect.start += len(images)
        boxes = np.zeros((len(images), 10, 4), "float32")
        labels = np.full((len(images), 10), -1)
        for k, row in enumerate(rows):
            boxes[k, : len(row["boxes"])] = row["boxes"] * row["scale"]
            labels[k, : len(row["labels"])] = row["labels"]
        return {"boxes": boxes, "confidence": np.ones(labels.shape), "labels": labels}

    oracle_detect.start = 0
    import keras_sepvit.tasks.retinanet as retinanet

    original = retinanet.detect
    retinanet.detect = oracle_detect
    try:
        metrics = coco_eval.evaluate_source(Oracle(), source, examples)
    finally:
        retinanet.detect = original
    assert metrics["map"] == pytest.approx(1.0)


@pytest.mark.slow
def test_tfds_coco_mock_data(script, backbone_preset, tmp_path, capsys):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=4):
        state = script.main(
            small_run("coco/2017", tmp_path / "run", backbone_preset, "--val-images", "2")
        )
    assert state["epoch"] == 0 and np.isfinite(state["logs"]["loss"])
    assert "on 'validation'" in capsys.readouterr().out


def test_refuses_bad_input(script, backbone_preset, tmp_path):
    root = tmp_path / "coco"
    root.mkdir()
    out = tmp_path / "run"
    with pytest.raises(SystemExit, match="annotations.json not found"):
        script.main(small_run(root, out, backbone_preset))
    path = write_coco_folder(root, "train", 2, seed=0)
    write_coco_folder(root, "val", 2, seed=1)
    with open(path) as f:
        data = json.load(f)
    os.remove(os.path.join(root, "train", "images", data["images"][1]["file_name"]))
    with pytest.raises(SystemExit, match="image '0001.png' \\(id 101\\).*is missing"):
        script.main(small_run(root, out, backbone_preset))
    data["annotations"][0]["category_id"] = 99
    data["images"] = data["images"][:1]
    with open(path, "w") as f:
        json.dump(data, f)
    with pytest.raises(SystemExit, match="category_id 99"):
        script.main(small_run(root, out, backbone_preset))
    with open(path, "w") as f:
        f.write("{not json")
    with pytest.raises(SystemExit, match="not a COCO annotation file"):
        script.main(small_run(root, out, backbone_preset))
    with pytest.raises(SystemExit, match="--min-side 800,480"):
        script.parse_args(["--min-side", "800,480"])
    with pytest.raises(SystemExit, match="not a folder"):
        script.main(small_run("./no/such/folder", out, backbone_preset))
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=2):
        with pytest.raises(SystemExit, match="'mnist' has no objects/bbox"):
            script.main(small_run("mnist", out, backbone_preset))
    assert not out.exists()  # nothing was written by a refused run
