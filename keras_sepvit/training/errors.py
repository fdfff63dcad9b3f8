"""The errors of a training run: each message says what to do.

`TrainingError` is the root: the scripts turn it (and only it, plus the
errors they name) into `error: ...` and exit status 1
(`keras_sepvit.training.cli.exit_on_error`).
"""


class TrainingError(Exception):
    """A training run that cannot go on as asked; the message says what to do."""


class RunExistsError(TrainingError, FileExistsError):
    """The output folder already holds a run, and neither resume nor overwrite was asked."""


class CheckpointError(TrainingError):
    """A checkpoint that is missing, damaged or does not belong to this run."""


class CheckpointWriteError(TrainingError, OSError):
    """Writing a checkpoint failed (e.g. disk full); the previous one is intact."""


class NonFiniteError(TrainingError, FloatingPointError):
    """The loss (or a weight) became NaN/inf: training stopped before saving it."""
