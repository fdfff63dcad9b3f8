"""The paper's training recipe for `model.fit` (Sec. 4.1).

AdamW, lr 1e-3 at batch 1024 scaled linearly with the batch, weight decay
0.05 (0.1 for B) except on biases, norms, window tokens and position-encoding
convs, linear warm-up (5 epochs, 20 for B) then cosine decay, label smoothing
0.1, stochastic depth 0.2 / 0.3 / 0.5 (T / S / B), gradient clipping.
`fit` compiles with it and trains with the run folder's atomic checkpoints
(`runs`, `checkpoints`).
"""

import keras

from keras_sepvit.layers import PositionEncoding, WindowTokens
from keras_sepvit.training.distribution import AdamW, default_jit_compile, replicas
from keras_sepvit.training.runs import (
    prepare_run,
    refuse_existing_run,
    run_lock,
    training_callbacks,
)
from keras_sepvit.training.schedules import warmup_cosine_schedule

# Sec. 4.1 and the DeiT/PVT recipe it follows; Lite is not in the paper's
# settings: it takes T's, with the small model's lighter stochastic depth.
RECIPES = {
    "lite": {"weight_decay": 0.05, "warmup_epochs": 5, "drop_path_rate": 0.1},
    "tiny": {"weight_decay": 0.05, "warmup_epochs": 5, "drop_path_rate": 0.2},
    "small": {"weight_decay": 0.05, "warmup_epochs": 5, "drop_path_rate": 0.3},
    "base": {"weight_decay": 0.1, "warmup_epochs": 20, "drop_path_rate": 0.5},
}
BASE_LEARNING_RATE = 1e-3
BASE_BATCH_SIZE = 1024


def scaled_learning_rate(batch_size, base_learning_rate=BASE_LEARNING_RATE):
    """The linear scaling rule: `base * batch / 1024`."""
    return base_learning_rate * batch_size / BASE_BATCH_SIZE


def no_weight_decay_variables(model):
    """Biases, norm scales/offsets, window tokens and PEG conv weights."""
    excluded = []
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, (WindowTokens, PositionEncoding)):
            excluded.extend(layer.trainable_weights)
    excluded.extend(v for v in model.trainable_weights if len(v.shape) <= 1)
    seen, unique = set(), []
    for v in excluded:
        if id(v) not in seen:
            seen.add(id(v))
            unique.append(v)
    return unique


def make_optimizer(
    model,
    learning_rate,
    total_steps,
    warmup_steps,
    weight_decay=0.05,
    clipnorm=5.0,
    min_learning_rate=1e-5,
):
    """AdamW with the recipe's schedule, decay exclusions and gradient clipping.

    Inside a TensorFlow strategy of several replicas it is `training.AdamW`,
    which clips the all-reduced gradient (Keras clips each replica's share).
    """
    if learning_rate is None or learning_rate <= 0:
        raise ValueError(f"`learning_rate` must be > 0. Received: learning_rate={learning_rate}")
    cls = keras.optimizers.AdamW
    if clipnorm and keras.backend.backend() == "tensorflow" and replicas() > 1:
        cls = AdamW
    optimizer = cls(
        learning_rate=warmup_cosine_schedule(
            learning_rate, total_steps, warmup_steps, min_learning_rate=min_learning_rate
        ),
        weight_decay=weight_decay,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        global_clipnorm=clipnorm or None,
    )
    optimizer.exclude_from_weight_decay(var_list=no_weight_decay_variables(model))
    return optimizer


def decayed_variable_paths(model, optimizer):
    """Paths of the variables the optimizer applies weight decay to."""
    return [v.path for v in model.trainable_weights if optimizer._use_weight_decay(v)]


def fit(
    model,
    optimizer,
    train_ds,
    val_ds,
    epochs,
    directory,
    label_smoothing=0.1,
    resume=False,
    jit_compile="auto",
    steps_per_epoch=None,
    validation_steps=None,
    tensorboard=True,
    verbose="auto",
    overwrite=False,
):
    """Compiles with the recipe's loss and runs `model.fit` with checkpoints.

    With `resume=True` it continues from `directory` (weights, optimizer state
    and so the learning-rate schedule, epoch counter, CSV log), after checking
    the checkpoint's checksums. A `directory` that already holds a run is
    refused unless `resume=True` or `overwrite=True` (which deletes that run's
    checkpoints and logs first). Returns `(history, initial_epoch)`.

    `jit_compile="auto"` is the backend's measured default
    (`default_jit_compile()`: XLA off on TensorFlow, no torch.compile on
    PyTorch, jit on JAX), not Keras' own "auto" (XLA on for TensorFlow).

    In a cluster (TensorFlow multi-worker, JAX multi-host), call it on every
    worker with the same shared `directory`: the chief alone deletes, writes
    and commits; every worker restores from it. The chief holds the folder's
    lock while it trains (released at the end, also on an error, unless
    `check_run` took it before); another process holding it is refused.

    Raises:
        RunLockedError: another live process holds `directory`.
        RunExistsError: `directory` holds a run and neither flag was given.
        CheckpointError: the checkpoint to resume is missing or damaged.
        NonFiniteError: the loss became NaN/inf (nothing of that epoch is saved).
        CheckpointWriteError: a checkpoint could not be written (e.g. disk full).
    """
    # The chief holds the run folder's lock (`runs.check_run` may have taken it already).
    with run_lock(directory):
        refuse_existing_run(directory, resume, overwrite)  # before compiling
        if jit_compile == "auto":
            jit_compile = default_jit_compile()
        model.compile(
            optimizer,
            keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing),
            metrics=["accuracy"],
            jit_compile=jit_compile,
        )
        initial_epoch = prepare_run(model, directory, resume, overwrite)
        history = model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=epochs,
            initial_epoch=initial_epoch,
            steps_per_epoch=steps_per_epoch,
            validation_steps=validation_steps,
            callbacks=training_callbacks(directory, tensorboard=tensorboard),
            shuffle=False,  # the tf.data pipeline shuffles
            verbose=verbose,
        )
        return history, initial_epoch
