"""Training: recipe pieces, input pipelines (tfds mock data, image folders), resume, demo."""

import csv
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_sepvit
from keras_sepvit import data, training

TINY = dict(
    depths=(1, 1, 1, 1),
    channels=(16, 32, 32, 64),
    num_heads=(1, 2, 2, 4),
    window_sizes=((2,), (2,), (2,), (1,)),
)


def _read_log(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_weight_decay_exclusions():
    model = keras_sepvit.SepViTLite(input_shape=(64, 64, 3))
    optimizer = training.make_optimizer(model, 1e-3, 100, 10)
    decayed = set(training.decayed_variable_paths(model, optimizer))
    every = {v.path for v in model.trainable_weights}
    excluded = every - decayed
    for path in excluded:
        assert path.rsplit("/", 1)[-1] in ("bias", "gamma", "beta", "tokens", "kernel"), path
        if path.endswith("kernel"):
            assert "pos_encoding" in path, path  # PEG convs are the only excluded kernels
    assert any("window_tokens/tokens" in p for p in excluded)
    assert {p for p in every if "pos_encoding" in p} <= excluded
    assert all(p.endswith("kernel") for p in decayed)
    assert {p for p in every if p.endswith("kernel") and "pos_encoding" not in p} == decayed
    # Applied as listed: on a zero gradient only decay moves a weight.
    optimizer = training.make_optimizer(model, 0.1, 100, 0, weight_decay=0.05)
    kernel = model.get_layer("predictions").kernel
    gamma = model.get_layer("norm").gamma
    kernel_before, gamma_before = kernel.numpy().copy(), gamma.numpy().copy()
    zeros = [tf.zeros_like(v) for v in model.trainable_weights]
    optimizer.apply_gradients(zip(zeros, model.trainable_weights))
    np.testing.assert_allclose(kernel.numpy(), kernel_before * (1 - 0.1 * 0.05), rtol=1e-5)
    np.testing.assert_array_equal(gamma.numpy(), gamma_before)


def test_schedule_warmup_then_cosine_and_linear_scaling():
    schedule = training.warmup_cosine_schedule(1e-3, total_steps=100, warmup_steps=10)
    lrs = [float(schedule(step)) for step in range(101)]
    assert lrs[0] == pytest.approx(1e-6)
    assert lrs[5] == pytest.approx((1e-6 + 1e-3) / 2, rel=1e-3)
    assert lrs[10] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[100] == pytest.approx(1e-5)
    assert training.scaled_learning_rate(256) == pytest.approx(2.5e-4)
    no_warmup = training.warmup_cosine_schedule(1e-3, total_steps=100, warmup_steps=0)
    assert float(no_warmup(0)) == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="total_steps=5, warmup_steps=10"):
        training.warmup_cosine_schedule(1e-3, 5, 10)


def test_mix_batch_keeps_label_mass():
    # Seeded: the draws no longer depend on what ran before in the process.
    # A CutMix box can legitimately be empty (lam near 1: a side under 2 px,
    # about 0.4% of draws at 32x32), which left one unseeded CI run unmixed;
    # so each mode must mix in one of three draws, and every draw keeps the mass.
    tf.random.set_seed(0)
    images = tf.random.uniform((8, 32, 32, 3), 0, 255)
    labels = tf.one_hot(tf.range(8) % 4, 4)
    for mixup, cutmix in ((0.8, 0.0), (0.0, 1.0), (0.8, 1.0)):
        mixed_any = False
        for _ in range(3):
            mixed, soft = data.mix_batch(images, labels, mixup, cutmix)
            assert mixed.shape == images.shape
            np.testing.assert_allclose(tf.reduce_sum(soft, -1).numpy(), 1.0, rtol=1e-5)
            mixed_any |= bool(np.any(soft.numpy() % 1 != 0) or not np.allclose(mixed, images))
        assert mixed_any, (mixup, cutmix)


def test_imagenet_without_archives_names_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="ILSVRC2012_img_train.tar.*ILSVRC2012_img_val"):
        data.load_split("imagenet2012", "train", str(tmp_path), str(tmp_path))
    with pytest.raises(FileNotFoundError, match="--manual-dir"):
        data.load_split("imagenet2012", "train", str(tmp_path), None)


def _image_folder(root, classes=3, per_class=6, sizes=((40, 52), (64, 48))):
    rng = np.random.default_rng(0)
    for split in ("train", "validation"):
        for c in range(classes):
            folder = os.path.join(root, split, f"class_{c}")
            os.makedirs(folder)
            for i in range(per_class):
                h, w = sizes[i % len(sizes)]
                image = rng.integers(0, 255, (h, w, 3), dtype="uint8")
                image[..., c] = 255  # a learnable colour cue
                keras.utils.save_img(os.path.join(folder, f"{i}.png"), image)
    return root


SMOKE = [
    "--variant", "lite", "--image-size", "32", "--batch-size", "4", "--epochs", "2",
    "--steps-per-epoch", "2", "--val-steps", "1", "--warmup-epochs", "1", "--no-tensorboard",
]  # fmt: skip


def test_fit_auto_jit_compile_is_the_measured_default(tmp_path, monkeypatch):
    # training.fit's "auto" is the project's measured table, not Keras' own
    # "auto" (XLA on for TensorFlow with a GPU, off on a CPU-only machine):
    # flipped to True here, a CPU-only Keras "auto" would give False.
    monkeypatch.setitem(training.distribution.JIT_COMPILE, keras.backend.backend(), True)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
    y = np.eye(2, dtype="float32")[np.arange(8) % 2]
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    training.fit(model, keras.optimizers.SGD(0.1), ds, ds, 1, str(tmp_path / "run"),
                 tensorboard=False, verbose=0)  # fmt: skip
    assert model.jit_compile is True


@pytest.mark.slow
def test_train_imagenet_on_mock_imagenet_full_augmentation(tmp_path, load_script):
    import tensorflow_datasets as tfds

    manual = tmp_path / "manual"
    manual.mkdir()
    for tar in data.IMAGENET_TARS:
        (manual / tar).write_bytes(b"")
    out = str(tmp_path / "run")
    with tfds.testing.mock_data(num_examples=16):
        load_script("examples", "train_imagenet").main(
            SMOKE + ["--manual-dir", str(manual), "--data-dir", str(tmp_path), "--out", out]
        )
    rows = _read_log(os.path.join(out, "log.csv"))
    assert [r["epoch"] for r in rows] == ["0", "1"]
    assert all(np.isfinite(float(r["loss"])) for r in rows)
    for name in ("last.keras", "best.weights.h5", "state.json"):
        assert os.path.exists(os.path.join(out, "checkpoint", name))
    assert training.read_state(out)["epoch"] == 1  # checksums verified
    model = keras.saving.load_model(os.path.join(out, "checkpoint", "last.keras"))
    assert model.output_shape == (None, 1000)


@pytest.mark.slow
def test_train_on_image_folder_and_help(tmp_path, capsys, load_script):
    root = _image_folder(str(tmp_path / "images"))
    out = str(tmp_path / "run")
    load_script("examples", "train_imagenet").main(
        SMOKE + ["--dataset", root, "--out", out, "--xla"]
    )
    model = keras.saving.load_model(os.path.join(out, "checkpoint", "last.keras"))
    assert model.output_shape == (None, 3)
    with pytest.raises(SystemExit):
        load_script("examples", "train_imagenet").parse_args(["--help"])
    help_text = capsys.readouterr().out
    for flag in (
        "--manual-dir",
        "--mixup",
        "--cutmix",
        "--randaugment",
        "--tpu",
        "--resume",
        "--mixed-precision",
        "--xla",
        "--clip-norm",
        "--drop-path",
        "--weight-decay",
        "--overwrite",
        "--skip-unreadable",
    ):
        assert flag in help_text


class _LearningRates(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.rates = []

    def on_train_batch_begin(self, batch, logs=None):
        opt = self.model.optimizer
        self.rates.append(float(opt.learning_rate))  # the schedule at the current step


class _Interrupt(keras.callbacks.Callback):
    def __init__(self, at_step):
        super().__init__()
        self.at_step = at_step

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations) == self.at_step:
            raise KeyboardInterrupt("simulated interruption")


def _run(directory, epochs, resume=False, extra_callbacks=()):
    keras.utils.set_random_seed(0)
    # SepViT-Lite's layers at one block per stage: tracing a train step costs
    # time per variable (AdamW's slots), and these tests are about the recipe.
    model = keras_sepvit.SepViT(**TINY, input_shape=(32, 32, 3), classes=3, name="sepvit_tiny_test")
    x = np.random.default_rng(1).uniform(0, 255, (24, 32, 32, 3)).astype("float32")
    y = np.eye(3, dtype="float32")[np.arange(24) % 3]
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(6)  # 4 steps, fixed order
    optimizer = training.make_optimizer(model, 1e-3, total_steps=4 * 3, warmup_steps=4)
    rates = _LearningRates()
    original = training.training_callbacks

    def with_extra(*args, **kwargs):
        return original(*args, **kwargs) + [rates, *extra_callbacks]

    training.recipe.training_callbacks = with_extra  # what training.fit calls
    try:
        training.fit(model, optimizer, ds, ds, epochs, directory, resume=resume,
                     jit_compile=False, tensorboard=False, verbose=0)  # fmt: skip
    finally:
        training.recipe.training_callbacks = original
    return model, rates.rates


@pytest.mark.slow
def test_interrupted_and_resumed_equals_uninterrupted(tmp_path):
    straight, straight_rates = _run(str(tmp_path / "a"), 3)

    part = str(tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        _run(part, 3, extra_callbacks=[_Interrupt(at_step=6)])  # in epoch 2
    state = training.read_state(part)
    assert state["epoch"] == 0 and state["iterations"] == 4
    assert not [f for f in os.listdir(part) if ".tmp" in f]
    resumed, resumed_rates = _run(part, 3, resume=True)

    assert int(resumed.optimizer.iterations) == int(straight.optimizer.iterations) == 12
    np.testing.assert_allclose(resumed_rates, straight_rates[4:], rtol=1e-6)
    for a, b in zip(resumed.get_weights(), straight.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    rows = _read_log(os.path.join(part, "log.csv"))
    assert [r["epoch"] for r in rows] == ["0", "1", "2"]


@pytest.mark.slow
def test_checkpoint_write_failure_keeps_previous(tmp_path, monkeypatch):
    directory = str(tmp_path / "ckpt")
    model, _ = _run(directory, 1)
    last = os.path.join(directory, "checkpoint", "last.keras")
    before = open(last, "rb").read()
    callback = training.AtomicCheckpoint(directory)
    callback.set_model(model)

    def broken_save(path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(model, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        callback.on_epoch_end(1, {"val_accuracy": 0.0})
    assert open(last, "rb").read() == before
    assert training.read_state(directory)["epoch"] == 0
    assert sorted(os.listdir(directory)) == ["checkpoint", "log.csv"]  # no temporary left


# The README main job's learning (loss falls, held-out accuracy, its files):
# tests/test_quantization.py::test_main_job_learns_and_writes_its_files, on its full run.
