"""The paper's training recipe for `model.fit` (Sec. 4.1), resumable and atomic.

AdamW, lr 1e-3 at batch 1024 scaled linearly with the batch, weight decay
0.05 (0.1 for B) except on biases, norms, window tokens and position-encoding
convs, linear warm-up (5 epochs, 20 for B) then cosine decay, label smoothing
0.1, stochastic depth 0.2 / 0.3 / 0.5 (T / S / B), gradient clipping.

Checkpoints: `last.keras` (model + optimizer, so the schedule continues) and
`state.json` every epoch, `best.weights.h5` on a better validation metric;
each written to a temporary file and renamed, so an interruption never leaves
a half-written checkpoint. TensorFlow backend for distribution strategies;
the recipe itself is plain Keras.
"""

import json
import os

import keras

from keras_sepvit.layers import PositionEncoding, WindowTokens

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


def warmup_cosine_schedule(
    learning_rate, total_steps, warmup_steps, warmup_from=1e-6, min_learning_rate=1e-5
):
    """Linear warm-up from `warmup_from` to `learning_rate`, then cosine to the minimum.

    A function of `optimizer.iterations`, so a resumed run continues it exactly.
    """
    if total_steps <= warmup_steps:
        raise ValueError(
            f"The run must be longer than its warm-up. Received: total_steps={total_steps}, "
            f"warmup_steps={warmup_steps}"
        )
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=min(warmup_from, learning_rate) if warmup_steps else learning_rate,
        decay_steps=total_steps - warmup_steps,
        alpha=min(1.0, min_learning_rate / learning_rate),
        warmup_target=learning_rate if warmup_steps else None,
        warmup_steps=warmup_steps,
    )


def make_optimizer(
    model,
    learning_rate,
    total_steps,
    warmup_steps,
    weight_decay=0.05,
    clipnorm=5.0,
    min_learning_rate=1e-5,
):
    """AdamW with the recipe's schedule, decay exclusions and gradient clipping."""
    if learning_rate is None or learning_rate <= 0:
        raise ValueError(f"`learning_rate` must be > 0. Received: learning_rate={learning_rate}")
    optimizer = keras.optimizers.AdamW(
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


def _atomic_write_json(path, payload):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class AtomicCheckpoint(keras.callbacks.Callback):
    """Each epoch: `last.keras` + `state.json`; on improvement: `best.weights.h5`.

    Files are written under a temporary name and renamed (atomic on POSIX), so
    a run killed at any moment leaves the previous complete checkpoint.

    Args:
        directory: str. Output folder.
        monitor: str. Metric for "best" (e.g. "val_accuracy"); higher is
            better unless `mode="min"`.
        mode: "max" or "min".
    """

    def __init__(self, directory, monitor="val_accuracy", mode="max"):
        super().__init__()
        if mode not in ("max", "min"):
            raise ValueError(f"`mode` must be 'max' or 'min'. Received: mode={mode!r}")
        self.directory = directory
        self.monitor = monitor
        self.mode = mode
        os.makedirs(directory, exist_ok=True)
        state = read_state(directory)
        self.best = state.get("best") if state else None

    def _better(self, value):
        if self.best is None:
            return True
        return value > self.best if self.mode == "max" else value < self.best

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        value = logs.get(self.monitor)
        if value is not None and self._better(float(value)):
            self.best = float(value)
            tmp = os.path.join(self.directory, "best.tmp.weights.h5")
            self.model.save_weights(tmp)
            os.replace(tmp, os.path.join(self.directory, "best.weights.h5"))
        tmp = os.path.join(self.directory, "last.tmp.keras")
        self.model.save(tmp)
        os.replace(tmp, os.path.join(self.directory, "last.keras"))
        _atomic_write_json(
            os.path.join(self.directory, "state.json"),
            {
                "epoch": epoch,
                "iterations": int(self.model.optimizer.iterations),
                "monitor": self.monitor,
                "best": self.best,
                "logs": {k: float(v) for k, v in logs.items()},
            },
        )


def read_state(directory):
    """The last completed epoch's `state.json`, or None."""
    path = os.path.join(directory, "state.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def restore(model, directory):
    """Loads `last.keras` (weights and optimizer state) into a compiled model.

    Returns the epoch to continue from (0 when there is no checkpoint).
    """
    state = read_state(directory)
    if state is None:
        return 0
    checkpoint = os.path.join(directory, "last.keras")
    if not os.path.exists(checkpoint):
        raise FileNotFoundError(
            f"{directory!r} has state.json but no last.keras; the checkpoint is incomplete"
        )
    model.optimizer.build(model.trainable_variables)
    model.load_weights(checkpoint)
    if int(model.optimizer.iterations) != state["iterations"]:
        raise ValueError(
            f"Restored optimizer is at step {int(model.optimizer.iterations)}, "
            f"state.json says {state['iterations']}: checkpoint and state disagree"
        )
    return state["epoch"] + 1


def training_callbacks(directory, monitor="val_accuracy", tensorboard=True):
    """Atomic checkpoints, a CSV log (appended on resume) and TensorBoard logs."""
    callbacks = [
        AtomicCheckpoint(directory, monitor=monitor),
        keras.callbacks.CSVLogger(os.path.join(directory, "log.csv"), append=True),
    ]
    if tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(directory, "tensorboard")))
    return callbacks


def distribution_strategy(tpu=None):
    """TPUStrategy with `tpu` ("" or "local" for a local TPU VM), MirroredStrategy
    with several GPUs, else the default strategy. TensorFlow backend."""
    import tensorflow as tf

    if tpu is not None:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
            tpu="" if tpu == "local" else tpu
        )
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


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
):
    """Compiles with the recipe's loss and runs `model.fit` with checkpoints.

    With `resume=True` it continues from `directory` (weights, optimizer state
    and so the learning-rate schedule, epoch counter, CSV log); without, a
    previous run's state in `directory` is cleared first. Returns
    `(history, initial_epoch)`.
    """
    model.compile(
        optimizer,
        keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing),
        metrics=["accuracy"],
        jit_compile=jit_compile,
    )
    os.makedirs(directory, exist_ok=True)
    initial_epoch = 0
    if resume:
        initial_epoch = restore(model, directory)
        if initial_epoch:
            print(f"Resuming at epoch {initial_epoch + 1} from {directory}")
    else:
        for stale in ("state.json", "log.csv"):
            if os.path.exists(os.path.join(directory, stale)):
                os.remove(os.path.join(directory, stale))
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
