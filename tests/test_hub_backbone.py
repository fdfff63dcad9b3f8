"""keras-hub `SepViTBackbone`: keras-hub's own backbone harness, presets, parity."""

import os

import keras
import numpy as np
from keras_hub.src.tests.test_case import TestCase

import keras_sepvit
from keras_sepvit.hub import SepViTBackbone
from keras_sepvit.parity import DENSE_IO_FILE, DENSE_WEIGHTS_FILE, TOLERANCE

SMALL = dict(
    depths=(1, 1, 1, 1),
    channels=(8, 16, 16, 32),
    num_heads=(1, 1, 2, 2),
    window_sizes=((7,), (7,), (7,), (7,)),
)
LEVELS = ["P2", "P3", "P4", "P5"]
# 64 x 96 pads in every block (stage maps 16x24, 8x12, 4x6, 2x3).
SIZES = [(16, 24), (8, 12), (4, 6), (2, 3)]


def _images(batch=2, height=64, width=96):
    return np.random.default_rng(0).normal(size=(batch, height, width, 3)).astype("float32")


class SepViTBackboneHarnessTest(TestCase):
    """keras-hub's `run_vision_backbone_test`: config and serialization round
    trip, eager call, compiled predict on arrays and a tf.data dataset, the
    class-name check, mixed precision (mixed_float16, mixed_bfloat16,
    bfloat16), int8/float8 quantization, pyramid keys and sizes."""

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


def test_dense_reference_parity(reference_dir):
    """The authors' dense seed-0 vectors through SepViTBackbone (Lite config)."""
    with np.load(os.path.join(reference_dir, DENSE_IO_FILE)) as data:
        io = {k: data[k] for k in data.files}
    config = keras_sepvit.MODEL_CONFIGS["lite"]
    backbone = SepViTBackbone(
        depths=config["depths"],
        channels=config["channels"],
        num_heads=config["num_heads"],
        window_sizes=config["window_sizes"],
    )
    keras_sepvit.load_official_weights(backbone, os.path.join(reference_dir, DENSE_WEIGHTS_FILE))
    pyramid = keras.Model(backbone.input, backbone.pyramid_outputs)
    got = pyramid(io["input_nhwc"], training=False)
    for stage in range(1, 5):
        diff = np.abs(keras.ops.convert_to_numpy(got[f"P{stage + 1}"]) - io[f"stage{stage}_nhwc"])
        assert diff.max() <= TOLERANCE, (stage, diff.max())
    # keras_sepvit.feature_pyramid reads the same layers.
    same = keras_sepvit.feature_pyramid(backbone)(io["input_nhwc"], training=False)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(same["P5"]), keras.ops.convert_to_numpy(got["P5"])
    )
