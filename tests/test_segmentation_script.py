"""examples/train_segmentation.py: data sources, checkpoints, exact resume, refusals."""

import csv
import os

import keras
import numpy as np
import pytest

pytest.importorskip("keras_hub")

from keras_sepvit import training  # noqa: E402

# A light model (the head at 16/32 channels) on 32x32 crops, no randomness
# in the network (dropout and stochastic depth off) so runs can be compared.
LIGHT = [
    "--fpn-channels", "16", "--head-channels", "32", "--crop-size", "32",
    "--batch-size", "2", "--dropout", "0", "--drop-path", "0", "--no-tensorboard",
    "--verbose", "0",
]  # fmt: skip
DIGITS = ["--digit-scenes", "--num-train", "8", "--num-test", "4", *LIGHT]


from test_segmentation import TINY  # noqa: E402  (the one tiny SepViT backbone config)


@pytest.fixture
def script(load_script, monkeypatch):
    """The script, building a tiny SepViT instead of --backbone's (fast tests)."""
    from keras_sepvit.demos import backbones
    from keras_sepvit.hub import SepViTBackbone

    def tiny(name, image_size, drop_path_rate=0.0):
        return SepViTBackbone(
            **TINY, drop_path_rate=drop_path_rate, image_shape=(image_size, image_size, 3)
        )

    monkeypatch.setattr(backbones, "build_backbone", tiny)
    return load_script("examples", "train_segmentation")


def _rows(directory):
    with open(os.path.join(directory, training.LOG)) as f:
        return list(csv.DictReader(f))


def _weights(directory):
    model = keras.saving.load_model(
        os.path.join(directory, training.CHECKPOINT, training.LAST), compile=False
    )
    return model.get_weights()


@pytest.mark.slow
def test_digit_scenes_run_checkpoints_and_refuses_existing_out(script, tmp_path):
    out = str(tmp_path / "run")
    script.main([*DIGITS, "--iterations", "2", "--steps-per-epoch", "1", "--out", out])
    state = training.read_state(out)
    assert state["epoch"] == 1 and state["iterations"] == 2
    assert state["monitor"] == "val_mean_iou"
    rows = _rows(out)
    assert [r["epoch"] for r in rows] == ["0", "1"]
    assert 0.0 <= float(rows[-1]["val_mean_iou"]) <= 1.0
    with pytest.raises(SystemExit, match="already holds a training run"):
        script.main([*DIGITS, "--iterations", "2", "--steps-per-epoch", "1", "--out", out])


class _Interrupt(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations) == 3:
            raise KeyboardInterrupt("simulated interruption")


@pytest.mark.slow
def test_interrupted_and_resumed_equals_uninterrupted(script, tmp_path, monkeypatch):
    args = [*DIGITS, "--iterations", "4", "--steps-per-epoch", "2", "--lr", "1e-3"]
    straight = str(tmp_path / "straight")
    script.main([*args, "--out", straight])

    part = str(tmp_path / "part")
    original = training.training_callbacks
    monkeypatch.setattr(
        training, "training_callbacks", lambda *a, **k: original(*a, **k) + [_Interrupt()]
    )
    with pytest.raises(KeyboardInterrupt):
        script.main([*args, "--out", part])
    monkeypatch.setattr(training, "training_callbacks", original)
    assert training.read_state(part)["iterations"] == 2
    script.main([*args, "--out", part, "--resume"])

    assert training.read_state(part)["iterations"] == 4
    for a, b in zip(_weights(part), _weights(straight)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert [r["epoch"] for r in _rows(part)] == ["0", "1"]


def test_train_dataset_epochs_do_not_depend_on_where_the_run_started():
    from keras_sepvit.data import segmentation as sd

    images = np.random.default_rng(0).integers(0, 255, (6, 40, 50, 3), dtype=np.uint8)
    labels = np.random.default_rng(1).integers(0, 5, (6, 40, 50), dtype=np.uint8)
    split = sd.array_split(images, labels)
    kwargs = dict(crop_size=32, seed=7, scale_range=(0.5, 2.0), base_scale=(64, 32))
    full = list(sd.train_dataset(split, 2, 3, 3, **kwargs).as_numpy_iterator())
    resumed = list(sd.train_dataset(split, 2, 3, 3, initial_epoch=2, **kwargs).as_numpy_iterator())
    assert len(full) == 9 and len(resumed) == 3
    for (a, la), (b, lb) in zip(full[6:], resumed):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(la, lb)
    assert not np.array_equal(full[0][0], full[3][0])  # epochs differ from each other
    # Padding beyond a small image is labelled ignore (255), never a class.
    assert set(np.unique(np.concatenate([b[1] for b in full]))) <= set(range(5)) | {255}


def _write_folder(root, split, count, size=(40, 56)):
    from PIL import Image

    rng = np.random.default_rng(len(split))
    os.makedirs(os.path.join(root, "images", split))
    os.makedirs(os.path.join(root, "annotations", split))
    for i in range(count):
        image = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
        label = rng.integers(0, 4, size, dtype=np.uint8)
        Image.fromarray(image).save(os.path.join(root, "images", split, f"img{i}.jpg"))
        Image.fromarray(label).save(os.path.join(root, "annotations", split, f"img{i}.png"))


@pytest.mark.slow
def test_image_folders_with_deeplabv3(script, tmp_path):
    root = str(tmp_path / "ade")
    _write_folder(root, "training", 4)
    _write_folder(root, "validation", 2)
    out = str(tmp_path / "run")
    script.main(
        [
            "--dataset", root, "--val-split", "validation", "--train-split", "training",
            "--num-classes", "4", "--reduce-zero-label", "yes", "--head", "deeplabv3",
            "--iterations", "1", "--out", out, *LIGHT,
        ]
    )  # fmt: skip
    assert 0.0 <= float(_rows(out)[-1]["val_mean_iou"]) <= 1.0


@pytest.mark.slow
def test_tfds_scene_parse150_mock(script, tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    out = str(tmp_path / "run")
    with tfds.testing.mock_data(num_examples=4):
        script.main(
            [
                "--iterations", "1", "--num-classes", "255", "--out", out,
                "--val-steps", "1", *LIGHT,
            ]
        )  # fmt: skip
    state = training.read_state(out)
    assert state["iterations"] == 1 and "val_mean_iou" in state["logs"]


def test_folder_layout_errors_name_the_folder(tmp_path):
    from keras_sepvit.data import segmentation as sd

    with pytest.raises(ValueError, match="images/training"):
        sd.load_split(str(tmp_path), "training")
    _write_folder(str(tmp_path), "training", 2)
    os.remove(os.path.join(tmp_path, "annotations", "training", "img1.png"))
    with pytest.raises(ValueError, match="img1"):
        sd.load_split(str(tmp_path), "training")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--digit-scenes", "--crop-size", "50"], "--crop-size must be a multiple of 32"),
        (["--dataset", "my_data"], "--num-classes is needed"),
        (["--digit-scenes", "--iterations", "5", "--steps-per-epoch", "2"], "multiple of"),
        (["--resume", "--overwrite"], "pass one"),
    ],
)
def test_bad_arguments_are_refused(script, argv, message, capsys):
    with pytest.raises(SystemExit):
        script.parse_args(argv)
    assert message in capsys.readouterr().err


def test_init_from_a_saved_classifier(script, tmp_path, capsys):
    """--init-from a `.weights.h5` classifier: read into a classifier of the
    backbone's config, copied into the backbone, the new tensors reported."""
    import keras_sepvit

    keras.utils.set_random_seed(2)
    classifier = keras_sepvit.SepViT(**TINY, include_top=True, classes=6, weights=None)
    path = str(tmp_path / "classifier.weights.h5")
    classifier.save_weights(path)
    args = script.parse_args([*DIGITS, "--init-from", path, "--out", str(tmp_path / "run")])
    model = script.build_model(args)
    assert "Unused classifier tensors" in capsys.readouterr().out
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(model.backbone.get_layer("stage3_block1").fc2.kernel),
        keras.ops.convert_to_numpy(classifier.get_layer("stage3_block1").fc2.kernel),
    )
    args.backbone = "mit_b0"
    with pytest.raises(SystemExit, match="--init-from needs a SepViT backbone"):
        script.build_model(args)
