"""Training: the paper's recipe for `model.fit` (Sec. 4.1), resumable and atomic.

One file per job:

- `recipe`: `RECIPES`, learning-rate scaling, weight-decay exclusions,
  `make_optimizer`, `fit`.
- `schedules`: `warmup_cosine_schedule` (classification), `PolyDecay`
  (segmentation), `WarmupStepDecay` (detection).
- `checkpoints`: the atomic checkpoint store: `AtomicCheckpoint`,
  `verify_checkpoint`, `read_state`, `restore`, `load_best`.
- `runs`: the run folder: `check_run`, `check_script_run`, `prepare_run`,
  `release_run`, `run_lock`, `training_callbacks`, `run_summary`.
- `locks`: one process per run folder (`run.lock`, `RunLockedError`).
- `settings`: a run's stored settings, compared on resume
  (`run_settings`, `NOT_SETTINGS`, `SettingsChangedError`).
- `distribution`: multi-worker TensorFlow, JAX `DataParallel` and multi-host,
  the chief rule.
- `errors`: `TrainingError` and its kinds.
- `cli`: what the training scripts share: `--out/--resume/--overwrite/
  --allow-changed-settings`, `epoch_steps`, `exit_on_error`.
- `build_optimizer` (from `keras_sepvit.optimizer_build`): builds a compiled
  model's optimizer before `fit` traces the train step (one trace, not two).

Distribution, by backend (`distribution_scope` picks it): TensorFlow uses
`MultiWorkerMirroredStrategy` when a cluster is configured (`TF_CONFIG`, or a
SLURM job of several tasks), `MirroredStrategy` on several GPUs, a TPU with
`tpu=`; JAX uses `keras.distribution.DataParallel` over every device of every
process (`initialize_multi_host` joins processes); PyTorch trains on one
device. In a cluster only the chief (TF: task "chief", else worker 0; JAX:
process 0) commits checkpoints; the other workers make the same calls into a
temporary folder that is deleted, so collective reads stay in step.
"""

from keras_sepvit.optimizer_build import build_optimizer
from keras_sepvit.training.checkpoints import (
    BEST,
    CHECKPOINT,
    LAST,
    LOG,
    STATE,
    STATE_FORMAT,
    AtomicCheckpoint,
    clear_run,
    existing_run,
    load_best,
    optimizer_step,
    read_state,
    restore,
    verify_checkpoint,
    write_log,
)
from keras_sepvit.training.cli import epoch_steps, warmup_epochs
from keras_sepvit.training.distribution import (
    JIT_COMPILE,
    AdamW,
    cluster_resolver,
    default_jit_compile,
    distribution_scope,
    distribution_strategy,
    initialize_multi_host,
    is_chief,
    multi_worker_strategy,
    replicas,
    shard_by,
)
from keras_sepvit.training.errors import (
    CheckpointError,
    CheckpointWriteError,
    NonFiniteError,
    RunExistsError,
    TrainingError,
)
from keras_sepvit.training.locks import LOCK, RunLockedError
from keras_sepvit.training.recipe import (
    BASE_BATCH_SIZE,
    BASE_LEARNING_RATE,
    RECIPES,
    decayed_variable_paths,
    fit,
    make_optimizer,
    no_weight_decay_variables,
    scaled_learning_rate,
)
from keras_sepvit.training.runs import (
    check_run,
    check_script_run,
    prepare_run,
    refuse_existing_run,
    release_run,
    run_lock,
    run_summary,
    training_callbacks,
)
from keras_sepvit.training.schedules import (
    PolyDecay,
    WarmupStepDecay,
    poly_schedule,
    warmup_cosine_schedule,
)
from keras_sepvit.training.settings import (
    NOT_SETTINGS,
    SETTINGS,
    SETTINGS_LOG,
    SettingsChangedError,
    run_settings,
)

__all__ = [
    "build_optimizer",
    "AdamW",
    "AtomicCheckpoint",
    "BASE_BATCH_SIZE",
    "BASE_LEARNING_RATE",
    "BEST",
    "check_run",
    "check_script_run",
    "CHECKPOINT",
    "CheckpointError",
    "CheckpointWriteError",
    "clear_run",
    "cluster_resolver",
    "decayed_variable_paths",
    "default_jit_compile",
    "distribution_scope",
    "distribution_strategy",
    "epoch_steps",
    "existing_run",
    "fit",
    "initialize_multi_host",
    "is_chief",
    "JIT_COMPILE",
    "LAST",
    "load_best",
    "LOCK",
    "LOG",
    "make_optimizer",
    "multi_worker_strategy",
    "no_weight_decay_variables",
    "NOT_SETTINGS",
    "NonFiniteError",
    "optimizer_step",
    "poly_schedule",
    "PolyDecay",
    "prepare_run",
    "read_state",
    "RECIPES",
    "refuse_existing_run",
    "release_run",
    "replicas",
    "restore",
    "run_lock",
    "run_settings",
    "run_summary",
    "RunExistsError",
    "RunLockedError",
    "scaled_learning_rate",
    "SETTINGS",
    "SETTINGS_LOG",
    "SettingsChangedError",
    "shard_by",
    "STATE",
    "STATE_FORMAT",
    "training_callbacks",
    "TrainingError",
    "verify_checkpoint",
    "warmup_cosine_schedule",
    "warmup_epochs",
    "WarmupStepDecay",
    "write_log",
]
