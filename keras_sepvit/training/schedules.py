"""Learning-rate schedules: the classifier's, the segmenters' and the detector's.

- `warmup_cosine_schedule`: the paper's classification recipe (Sec. 4.1):
  linear warm-up, then cosine decay (keras' `CosineDecay`).
- `PolyDecay` / `poly_schedule`: linear warm-up, then mmsegmentation's "poly"
  policy (Semantic FPN, DeepLabV3+; Sec. 4.4).
- `WarmupStepDecay`: mmdetection's warm-up then step decay (RetinaNet 1x;
  Sec. 4.3).

Each is a function of `optimizer.iterations`, so a resumed run continues it
exactly; the two classes are registered Keras objects (saved with the
optimizer in `.keras` files).
"""

import keras
from keras import ops

from keras_sepvit.layers import PACKAGE


def warmup_cosine_schedule(
    learning_rate, total_steps, warmup_steps, warmup_from=1e-6, min_learning_rate=1e-5
):
    """Linear warm-up from `warmup_from` to `learning_rate`, then cosine to the minimum.

    A function of `optimizer.iterations`, so a resumed run continues it exactly.
    """
    if total_steps <= warmup_steps:
        raise ValueError(
            "The run must be longer than its warm-up: shorten the warm-up (--warmup-epochs "
            "in the examples) or train longer. Received: "
            f"total_steps={total_steps}, warmup_steps={warmup_steps}"
        )
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=min(warmup_from, learning_rate) if warmup_steps else learning_rate,
        decay_steps=total_steps - warmup_steps,
        alpha=min(1.0, min_learning_rate / learning_rate),
        warmup_target=learning_rate if warmup_steps else None,
        warmup_steps=warmup_steps,
    )


@keras.saving.register_keras_serializable(package=PACKAGE)
class PolyDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up, then `lr * (1 - t / T) ** power` to `min_learning_rate`
    (mmsegmentation's "poly" policy, power 0.9, used by Semantic FPN)."""

    def __init__(
        self, learning_rate, total_steps, warmup_steps=0, power=0.9, min_learning_rate=0.0
    ):
        if total_steps <= warmup_steps:
            raise ValueError(
                "`total_steps` must be larger than `warmup_steps`. Received: "
                f"total_steps={total_steps}, warmup_steps={warmup_steps}"
            )
        self.learning_rate = float(learning_rate)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.power = float(power)
        self.min_learning_rate = float(min_learning_rate)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        progress = ops.clip(step / float(self.total_steps), 0.0, 1.0)
        decayed = (self.learning_rate - self.min_learning_rate) * (
            1.0 - progress
        ) ** self.power + self.min_learning_rate
        if not self.warmup_steps:
            return decayed
        warm = self.learning_rate * (step + 1.0) / float(self.warmup_steps)
        return ops.where(step < self.warmup_steps, ops.minimum(warm, decayed), decayed)

    def get_config(self):
        return {
            "learning_rate": self.learning_rate,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "power": self.power,
            "min_learning_rate": self.min_learning_rate,
        }


def poly_schedule(learning_rate, total_steps, warmup_steps=0, power=0.9):
    """`PolyDecay(learning_rate, total_steps, warmup_steps, power)`."""
    return PolyDecay(learning_rate, total_steps, warmup_steps, power)


@keras.saving.register_keras_serializable(package=PACKAGE)
class WarmupStepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """mmdetection's detection schedule: linear warm-up, then x`factor` at each boundary.

    The paper's RetinaNet 1x: 500 warm-up iterations from `learning_rate *
    warmup_ratio`, then the rate x0.1 after epochs 8 and 11 of 12
    (`boundaries` are iteration counts). A function of the optimizer's
    iteration count, so a resumed run continues it exactly.

    Args:
        learning_rate: float. Rate after warm-up.
        warmup_steps: int. Warm-up iterations.
        boundaries: list of int. Iterations after which the rate is scaled.
        factor: float. Scale at each boundary. Defaults to 0.1.
        warmup_ratio: float. First rate / `learning_rate`. Defaults to 0.001.
    """

    def __init__(self, learning_rate, warmup_steps, boundaries, factor=0.1, warmup_ratio=0.001):
        if learning_rate <= 0:
            raise ValueError(
                f"`learning_rate` must be > 0. Received: learning_rate={learning_rate}"
            )
        self.learning_rate = float(learning_rate)
        self.warmup_steps = int(warmup_steps)
        self.boundaries = [int(b) for b in boundaries]
        self.factor = float(factor)
        self.warmup_ratio = float(warmup_ratio)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        decays = (
            sum(ops.cast(step >= b, "float32") for b in self.boundaries) if self.boundaries else 0.0
        )
        rate = self.learning_rate * ops.power(self.factor, decays)
        if self.warmup_steps:
            progress = ops.minimum(step / self.warmup_steps, 1.0)
            rate = rate * (self.warmup_ratio + (1.0 - self.warmup_ratio) * progress)
        return rate

    def get_config(self):
        return {
            "learning_rate": self.learning_rate,
            "warmup_steps": self.warmup_steps,
            "boundaries": self.boundaries,
            "factor": self.factor,
            "warmup_ratio": self.warmup_ratio,
        }
