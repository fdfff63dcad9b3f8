"""Builds a compiled model's optimizer before `fit` traces its train step.

On TensorFlow without a distribution strategy, Keras creates the optimizer's
variables (AdamW: two slots per weight) inside the first traced train step.
`tf.function` then traces the whole step a second time, because the first
trace created variables, and each variable is created from inside a graph.
For SepViT-Lite at 64x64 on a 2-core CPU that made the first `fit` step take
41 s; with the optimizer built first, 17 s (same numbers: the slots start at
zero either way). Under a strategy, and on JAX and PyTorch, Keras already
builds it before tracing (`Trainer._symbolic_build`), so this does nothing there.
"""

import keras


def build_optimizer(model):
    """Creates `model.optimizer`'s variables for `model.trainable_variables` now.

    Call it after `compile` and before `fit` (as Keras itself does under a
    strategy). Nothing happens when the model is not compiled, its optimizer
    is already built (e.g. restored from a checkpoint), the backend is not
    TensorFlow, or a `tf.distribute` strategy owns the model (Keras builds it
    in the strategy's scope then).
    """
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None or optimizer.built or keras.backend.backend() != "tensorflow":
        return
    if getattr(model, "_distribute_strategy", None) is not None:
        return
    optimizer.build(model.trainable_variables)


class OptimizerBuiltBeforeFit:
    """Mixin for Keras models: `fit` builds the optimizer first (`build_optimizer`)."""

    def fit(self, *args, **kwargs):
        build_optimizer(self)
        return super().fit(*args, **kwargs)
