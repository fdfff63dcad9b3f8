"""The optimizer is built before `fit` traces the train step (one trace, not two).

`keras_sepvit.optimizer_build`: on TensorFlow without a strategy Keras builds
the optimizer inside the first trace, and `tf.function` traces the step again.
"""

import keras
import numpy as np
import pytest

from keras_sepvit.optimizer_build import OptimizerBuiltBeforeFit, build_optimizer

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="the double trace is TensorFlow's"
)


class CountCalls(keras.layers.Layer):
    """Identity that counts how often its `call` runs in Python (once per trace)."""

    calls = 0

    def call(self, x):
        CountCalls.calls += 1
        return x


def _model(cls=keras.Model):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    x = CountCalls()(keras.layers.Dense(8)(inputs))
    x = keras.layers.LayerNormalization()(x)
    model = cls(inputs, keras.layers.Dense(3)(x))
    model.compile(keras.optimizers.AdamW(1e-2, weight_decay=0.05), "mse", jit_compile=False)
    return model


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(16, 6)).astype("float32"), rng.normal(size=(16, 3)).astype("float32")


def _traces(model):
    """How many times fit traced the model (training calls only: no validation)."""
    CountCalls.calls = 0
    model.fit(*_data(), batch_size=8, epochs=2, shuffle=False, verbose=0)
    return CountCalls.calls


def test_fit_traces_once_with_the_optimizer_built_and_gives_the_same_weights():
    plain = _model()
    assert _traces(plain) == 2  # Keras alone: the first trace builds the optimizer, then again
    built = _model()
    build_optimizer(built)
    assert built.optimizer.built
    assert _traces(built) == 1
    for a, b in zip(plain.weights, built.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


def test_mixin_builds_before_fit():
    class Model(OptimizerBuiltBeforeFit, keras.Model):
        pass

    model = _model(Model)
    assert not model.optimizer.built
    assert _traces(model) == 1


def test_nothing_to_build():
    model = _model()
    build_optimizer(model)
    variables = list(model.optimizer.variables)
    build_optimizer(model)  # already built: left as it is (e.g. restored from a checkpoint)
    assert model.optimizer.variables == variables
    build_optimizer(keras.Sequential([keras.layers.Dense(2)]))  # not compiled: no error


def test_segmenters_and_mask_rcnn_fit_with_the_optimizer_built():
    from keras_sepvit.tasks.mask_rcnn import MaskRCNN
    from keras_sepvit.tasks.semantic_fpn import SemanticFPNSegmenter
    from keras_sepvit.tasks.upernet import UperNetSegmenter

    for cls in (MaskRCNN, SemanticFPNSegmenter, UperNetSegmenter):
        assert cls.fit is OptimizerBuiltBeforeFit.fit, cls


def test_prepare_run_builds_the_optimizer(tmp_path):
    from keras_sepvit import training

    model = _model()
    training.prepare_run(model, str(tmp_path / "run"))
    try:
        assert model.optimizer.built
    finally:
        training.release_run(str(tmp_path / "run"))
