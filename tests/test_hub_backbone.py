"""keras-hub `SepViTBackbone`: keras-hub's own backbone harness, presets, parity.

The harness and preset tests run in-process on the session backend
(TensorFlow) and, marked slow, in a child process on JAX and on PyTorch.
"""

import os
import subprocess
import sys

import keras
import keras_hub
import numpy as np
import pytest
from conftest import backend_env
from keras_hub.src.tests.test_case import TestCase

import keras_sepvit
from keras_sepvit.hub import SepViTBackbone, SepViTImageConverter
from keras_sepvit.hub.sepvit_presets import PRESETS_DIR, backbone_presets, preset_files
from keras_sepvit.parity import (
    DENSE_IO_FILE,
    DENSE_WEIGHTS_FILE,
    IO_FILE,
    TOLERANCE,
    WEIGHTS_FILE,
    default_reference_dir,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(
    depths=(1, 1, 1, 1),
    channels=(8, 16, 16, 32),
    num_heads=(1, 1, 2, 2),
    window_sizes=((7,), (7,), (7,), (7,)),
)
LEVELS = ["P2", "P3", "P4", "P5"]
# 64 x 96 pads in every block (stage maps 16x24, 8x12, 4x6, 2x3).
SIZES = [(16, 24), (8, 12), (4, 6), (2, 3)]
# Table 1 of the paper, written out (not read from MODEL_CONFIGS).
PAPER = {
    "lite": dict(depths=[1, 2, 6, 2], channels=[32, 64, 128, 256], num_heads=[1, 2, 4, 8]),
    "tiny": dict(depths=[1, 2, 6, 2], channels=[96, 192, 384, 768], num_heads=[3, 6, 12, 24]),
    "small": dict(depths=[1, 2, 14, 2], channels=[96, 192, 384, 768], num_heads=[3, 6, 12, 24]),
    "base": dict(depths=[1, 2, 14, 2], channels=[128, 256, 512, 1024], num_heads=[4, 8, 16, 32]),
}
# The authors' classifier parameter counts (M) include the final norm and the
# 1000-class head, which the classifier-stage backbone leaves out.
AUTHORS_PARAMS = {"lite": 3.661, "tiny": 31.183, "small": 46.571, "base": 82.377}


@pytest.fixture(scope="module")
def reference_files():
    """The shared/reference folder, as conftest's `reference_dir` (which the
    PyTorch child process cannot use: it runs without conftest, see
    `test_other_backends`)."""
    directory = default_reference_dir()
    if not os.path.exists(os.path.join(directory, DENSE_WEIGHTS_FILE)):
        message = f"reference files not found in {directory!r}; set KERAS_SEPVIT_REFERENCE"
        if os.environ.get("KERAS_SEPVIT_REQUIRE_REFERENCE"):
            pytest.fail(message)
        pytest.skip(message)
    return directory


def _images(batch=2, height=64, width=96, seed=0):
    return np.random.default_rng(seed).normal(size=(batch, height, width, 3)).astype("float32")


def _numpy(x):
    return keras.ops.convert_to_numpy(x)


def _pyramid(backbone):
    return keras.Model(backbone.input, backbone.pyramid_outputs)


class SepViTBackboneHarnessTest(TestCase):
    """keras-hub's `run_vision_backbone_test`: config and serialization round
    trip, eager call, compiled predict on arrays and on a tf.data dataset, the
    class-name check, mixed precision (mixed_float16, mixed_bfloat16,
    bfloat16; keras-hub skips it on PyTorch CPU), int8/float8 quantization
    (skipped on PyTorch), pyramid keys and sizes, and "channels_first" (which
    keras-hub skips on TensorFlow CPU: `test_channels_first_*` below cover it
    there)."""

    def _run(self, **kwargs):
        self.run_vision_backbone_test(
            cls=SepViTBackbone,
            init_kwargs={**SMALL, **kwargs},
            input_data=_images(),
            expected_output_shape=(2, 2, 3, 32),
            expected_pyramid_output_keys=LEVELS,
            expected_pyramid_image_sizes=SIZES,
        )

    def test_dense_backbone(self):
        self._run(dense=True)

    def test_classifier_stages_backbone(self):
        self._run(dense=False)

    def test_channels_first_harness(self):
        """keras-hub's backbone harness with "channels_first" as the global format."""
        original = keras.config.image_data_format()
        keras.config.set_image_data_format("channels_first")
        try:
            self.run_backbone_test(
                cls=SepViTBackbone,
                init_kwargs=dict(SMALL),
                input_data=np.transpose(_images(), (0, 3, 1, 2)),
                expected_output_shape=(2, 32, 2, 3),
                run_quantization_check=False,
            )
        finally:
            keras.config.set_image_data_format(original)

    def test_model_saving(self):
        """A `.keras` file gives back a SepViTBackbone with the same outputs."""
        self.run_model_saving_test(
            cls=SepViTBackbone, init_kwargs=dict(SMALL), input_data=_images()
        )


@pytest.mark.parametrize("dense", [True, False])
def test_channels_first_equals_channels_last(dense):
    """data_format="channels_first": (B, C, H, W) in, every pyramid level
    (B, C, h, w) out, the same numbers as channels-last with the same weights."""
    last = SepViTBackbone(**SMALL, dense=dense, data_format="channels_last")
    first = SepViTBackbone(**SMALL, dense=dense, data_format="channels_first")
    assert first.image_shape == (3, None, None) and first.data_format == "channels_first"
    first.set_weights(last.get_weights())
    x = _images()
    expected = _pyramid(last)(x)
    got = _pyramid(first)(np.transpose(x, (0, 3, 1, 2)))
    for level, size, width in zip(LEVELS, SIZES, SMALL["channels"]):
        assert tuple(got[level].shape) == (2, width) + size
        np.testing.assert_allclose(
            _numpy(got[level]), np.transpose(_numpy(expected[level]), (0, 3, 1, 2)), atol=1e-5
        )
    np.testing.assert_allclose(_numpy(first(np.transpose(x, (0, 3, 1, 2)))), _numpy(got["P5"]))


@pytest.mark.parametrize("policy", ["bfloat16", "mixed_float16", "mixed_bfloat16"])
def test_dtype_policy_outputs_follow_float32(policy):
    """Every layer takes the policy; the outputs have its compute dtype and
    stay close to float32 with the same weights (LayerNorm, softmax in float32)."""
    reference = SepViTBackbone(**SMALL)
    backbone = SepViTBackbone(**SMALL, dtype=policy)
    compute = keras.DTypePolicy(policy).compute_dtype
    variable = keras.DTypePolicy(policy).variable_dtype
    for layer in backbone._flatten_layers(include_self=False):
        if not isinstance(layer, keras.layers.InputLayer):
            assert layer.dtype_policy.name == policy, layer.name
    assert {w.dtype for w in backbone.weights} == {variable}
    backbone.set_weights(reference.get_weights())
    x = _images()
    expected = _pyramid(reference)(x)
    got = _pyramid(backbone)(x)
    for level in LEVELS:
        assert keras.backend.standardize_dtype(got[level].dtype) == compute
        out = _numpy(keras.ops.cast(got[level], "float32"))
        assert np.isfinite(out).all()
        # Normed maps (unit scale): bfloat16 keeps ~3 significant digits.
        np.testing.assert_allclose(out, _numpy(expected[level]), atol=0.15)
    assert backbone.get_config()["dtype"]["config"]["name"] == policy


@pytest.mark.parametrize(
    "preset, io_file, weights_file",
    [
        # The authors' dense seed-0 vectors through SepViTBackbone (Lite config).
        ("sepvit_lite_dense", DENSE_IO_FILE, DENSE_WEIGHTS_FILE),
        # dense=False: their classifier state dict (final norm and head
        # skipped) gives their stage outputs.
        ("sepvit_lite", IO_FILE, WEIGHTS_FILE),
    ],
)
def test_reference_parity(reference_files, preset, io_file, weights_file):
    with np.load(os.path.join(reference_files, io_file)) as data:
        io = {k: data[k] for k in data.files}
    backbone = SepViTBackbone.from_preset(preset)
    keras_sepvit.load_official_weights(backbone, os.path.join(reference_files, weights_file))
    got = _pyramid(backbone)(io["input_nhwc"], training=False)
    for stage in range(1, 5):
        diff = np.abs(_numpy(got[f"P{stage + 1}"]) - io[f"stage{stage}_nhwc"]).max()
        assert diff <= TOLERANCE, (stage, diff)
    # keras_sepvit.feature_pyramid reads the same layers.
    same = keras_sepvit.feature_pyramid(backbone)(io["input_nhwc"], training=False)
    np.testing.assert_array_equal(_numpy(same["P5"]), _numpy(got["P5"]))
    np.testing.assert_array_equal(_numpy(backbone(io["input_nhwc"])), _numpy(got["P5"]))


@pytest.mark.parametrize("source", ["model", ".keras", ".weights.h5"])
def test_load_classifier_weights_into_backbone(source, tmp_path):
    """`keras_sepvit.load_classifier_weights` fills a dense SepViTBackbone
    from a keras_sepvit classifier of the same config, or from its saved file
    (a `.weights.h5` is read into a classifier built from the backbone's config)."""
    from keras_sepvit.convert import load_classifier_weights

    keras.utils.set_random_seed(1)
    classifier = keras_sepvit.SepViT(**SMALL, include_top=True, classes=5, weights=None)
    given = classifier
    if source != "model":
        given = str(tmp_path / f"classifier{source}")
        classifier.save(given) if source == ".keras" else classifier.save_weights(given)
    backbone = SepViTBackbone(**SMALL)
    report = load_classifier_weights(backbone, given, verbose=False)
    assert "norm_list.0.weight" in report["new"] and "head.weight" in report["unused"]
    np.testing.assert_array_equal(
        _numpy(backbone.get_layer("stage2_block1").fc1.kernel),
        _numpy(classifier.get_layer("stage2_block1").fc1.kernel),
    )


def test_load_classifier_weights_refuses_files_that_do_not_fit(tmp_path):
    from keras_sepvit.convert import load_classifier_weights

    other = dict(SMALL, channels=tuple(2 * c for c in SMALL["channels"]))
    path = str(tmp_path / "wider.weights.h5")
    keras_sepvit.SepViT(**other, include_top=True, classes=3, weights=None).save_weights(path)
    backbone = SepViTBackbone(**SMALL)
    before = [_numpy(w) for w in backbone.weights]
    with pytest.raises(ValueError, match="wider.weights.h5"):
        load_classifier_weights(backbone, path, verbose=False)
    with pytest.raises(FileNotFoundError, match="missing.keras"):
        load_classifier_weights(backbone, str(tmp_path / "missing.keras"), verbose=False)
    for old, weight in zip(before, backbone.weights):
        np.testing.assert_array_equal(old, _numpy(weight))  # nothing was changed


def test_preset_round_trip(tmp_path):
    """save_to_preset -> from_preset (SepViTBackbone and keras_hub's Backbone)
    gives back the class, the config and every weight exactly."""
    backbone = SepViTBackbone(**SMALL, drop_path_rate=0.1, name="sep_vi_t_backbone_small")
    backbone.save_to_preset(str(tmp_path))
    x = _images()
    expected = _numpy(backbone(x))
    for loader in (SepViTBackbone, keras_hub.models.Backbone):
        restored = loader.from_preset(str(tmp_path))
        assert type(restored) is SepViTBackbone
        assert restored.get_config() == backbone.get_config()
        for a, b in zip(backbone.weights, restored.weights, strict=True):
            assert a.path == b.path
            np.testing.assert_array_equal(_numpy(a), _numpy(b))
        np.testing.assert_array_equal(_numpy(restored(x)), expected)
    # load_weights=False: the same architecture, fresh weights.
    fresh = SepViTBackbone.from_preset(str(tmp_path), load_weights=False)
    assert fresh.count_params() == backbone.count_params()
    assert not np.array_equal(_numpy(fresh.weights[0]), _numpy(backbone.weights[0]))


@pytest.mark.parametrize("name", sorted(backbone_presets))
@pytest.mark.slow
def test_builtin_preset_builds_offline(name):
    """Every registered name builds from the shipped config (no download):
    the paper's table, the listed parameter count, random weights."""
    entry = SepViTBackbone.presets[name]
    assert entry["kaggle_handle"] == os.path.join(PRESETS_DIR, name)
    variant = name.removeprefix("sepvit_").removesuffix("_dense")
    backbone = SepViTBackbone.from_preset(name)
    assert backbone.dense == name.endswith("_dense")
    for key, value in PAPER[variant].items():
        assert list(getattr(backbone, key)) == value, key
    blocks = [layer for layer in backbone.layers if "_block" in layer.name]
    assert len(blocks) == sum(PAPER[variant]["depths"])
    assert backbone.count_params() == entry["metadata"]["params"]
    if not backbone.dense:
        head_and_norm = (PAPER[variant]["channels"][-1] + 1) * 1000 + 2 * PAPER[variant][
            "channels"
        ][-1]
        total = (backbone.count_params() + head_and_norm) / 1e6
        assert abs(total - AUTHORS_PARAMS[variant]) < 0.001, total
    assert "no weights" in entry["metadata"]["description"]


def test_builtin_preset_refuses_load_weights_true():
    with pytest.raises(ValueError, match="load_weights=True"):
        SepViTBackbone.from_preset("sepvit_lite_dense", load_weights=True)
    with pytest.raises(ValueError, match="clowntown"):
        SepViTBackbone.from_preset("clowntown")


def test_shipped_preset_folders_match_table():
    """keras_sepvit/hub/presets/* are what `python -m keras_sepvit.hub.sepvit_presets` writes."""
    assert sorted(os.listdir(PRESETS_DIR)) == sorted(backbone_presets)
    for name in backbone_presets:
        for file_name, text in preset_files(name).items():
            with open(os.path.join(PRESETS_DIR, name, file_name), encoding="utf-8") as f:
                assert f.read() == text, (name, file_name)


def test_image_converter_preset_normalises_like_the_model():
    converter = keras_hub.layers.ImageConverter.from_preset("sepvit_tiny_dense")
    assert isinstance(converter, SepViTImageConverter)
    pixels = np.random.default_rng(1).uniform(0, 255, size=(2, 40, 48, 3)).astype("float32")
    np.testing.assert_allclose(
        _numpy(converter(pixels)), _numpy(keras_sepvit.normalize_images(pixels)), atol=1e-5
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(dense="yes"), "dense='yes'"),
        (dict(data_format="NHWC"), "data_format='NHWC'"),
        (dict(image_shape=(16, 16, 3)), r"image_shape=\(16, 16, 3\)"),
        (dict(num_heads=(1, 1, 3, 2)), "num_heads="),
        (dict(window_sizes=((7,), (7,), (7,), (7, 7))), "window_sizes="),
    ],
)
def test_bad_arguments_name_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SepViTBackbone(**{**SMALL, **kwargs})


def test_import_keras_sepvit_does_not_import_keras_hub():
    code = "import sys, keras_sepvit; assert 'keras_hub' not in sys.modules, 'keras_hub imported'"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]


# Each child process stays within a few minutes: on JAX keras-hub's harness
# runs every dtype policy eagerly (op by op), so it gets a process per mode.
# On JAX the harness runs on the dense backbone only (about 2 minutes saved):
# the classifier-stage backbone shares its layers but for the window tokens
# and padding masks, and runs on JAX through this file's other tests (the
# authors' classifier weights, presets, saving) and test_reference's JAX
# parity; the harness runs it on TensorFlow and PyTorch.
# (`test_channels_first_harness` is for TensorFlow CPU, where the harness
# skips channels_first; on JAX and PyTorch the harness itself runs it.)
CHILD_RUNS = [
    ("jax", "test_dense_backbone or session_backend"),
    ("jax", "not Harness or test_model_saving"),
    ("torch", "not test_channels_first_harness"),
]
# conftest fails any session that imported TensorFlow and torch.onnx (a
# segfault with PyTorch's CUDA wheel). keras-hub's harness needs TensorFlow
# (tf.data) on every backend and Keras' PyTorch backend imports torch.onnx,
# so the PyTorch child runs without conftest: a crash there fails this test.
NO_CONFTEST = {"torch": ["--noconftest"]}


@pytest.mark.slow
@pytest.mark.parametrize("backend, selection", CHILD_RUNS)
def test_other_backends(backend, selection, reference_dir):
    """This file's fast tests (keras-hub's harness, channels_first, dtype
    policies, presets, parity) in a child process on JAX / PyTorch."""
    env = backend_env(
        backend, KERAS_SEPVIT_REFERENCE=reference_dir, KERAS_SEPVIT_REQUIRE_REFERENCE="1"
    )
    selection = f"({selection}) and " if selection else ""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-s",
            "-p",
            "no:cacheprovider",
            # every tier of this file but the child runs themselves (the
            # PyTorch child, without conftest, has no tiers)
            *(NO_CONFTEST.get(backend) or ["--full"]),
            "-k",
            f"{selection}not import_keras_sepvit and not test_other_backends",
            os.path.join(ROOT, "tests", "test_hub_backbone.py"),
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    tail = result.stdout[-4000:] + result.stderr[-2000:]
    assert result.returncode == 0, tail
    assert f"backend={backend}" in result.stdout, tail
    assert " passed" in result.stdout and "failed" not in result.stdout, tail


def test_session_backend():
    """The backend is the one asked for (prints it for the child processes above)."""
    print(f"\nbackend={keras.backend.backend()}")
    assert keras.backend.backend() == os.environ.get("KERAS_BACKEND", "tensorflow")
