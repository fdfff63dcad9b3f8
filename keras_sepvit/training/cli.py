"""The command-line pieces every training script shares.

- `add_run_arguments(parser, default_out)`: `--out`, `--resume`,
  `--overwrite`, `--allow-changed-settings`; `check_run_arguments(parser,
  args)` refuses `--resume` with `--overwrite`, and the last without `--resume`.
- `epoch_steps(num_examples, batch_size, steps_per_epoch)`: steps per
  epoch, refused before any training when the split is smaller than a batch
  (the message names the flag to change); `warmup_epochs`: the warm-up,
  checked against `--epochs` or clamped to it.
- `exit_on_error(*extra_error_types)`: `TrainingError` (and the types named)
  become `SystemExit("error: ...")`, exit status 1 and one line that says what
  to do, instead of a traceback.

Example:

```python
import argparse

from keras_sepvit import training
from keras_sepvit.training.cli import add_run_arguments, check_run_arguments, exit_on_error

parser = argparse.ArgumentParser()
add_run_arguments(parser, "runs/train")
args = parser.parse_args(["--out", "runs/example"])
check_run_arguments(parser, args)
with exit_on_error():  # a run already in --out: "error: ... --resume ... --overwrite ..."
    training.check_run(args.out, args.resume, args.overwrite)
```
"""

import contextlib

from keras_sepvit.training import locks
from keras_sepvit.training.errors import TrainingError

RUN_FOLDER_HELP = "checkpoints, CSV and TensorBoard logs"


def add_run_arguments(parser, default_out, out_help=RUN_FOLDER_HELP):
    """Adds the run-folder flags: `--out`, `--resume`, `--overwrite` and
    `--allow-changed-settings` (`training.settings`).

    Args:
        parser: argparse.ArgumentParser. The script's parser.
        default_out: str. Default of `--out` (e.g. "runs/train").
        out_help: str. Help of `--out`. Defaults to the checkpoint, log and
            TensorBoard folder of `training.fit`.
    """
    parser.add_argument("--out", default=default_out, help=out_help)
    parser.add_argument(
        "--resume", action="store_true", help="continue from --out (weights, optimizer, epoch)"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start over in an --out that holds a run (deletes its checkpoints and logs)",
    )
    parser.add_argument(
        "--allow-changed-settings",
        action="store_true",
        help="--resume with settings other than the run's (each change is logged to "
        "settings.log); without it such a resume is refused",
    )


def check_run_arguments(parser, args):
    """Refuses `--resume` with `--overwrite`, and `--allow-changed-settings` without
    `--resume` (`parser.error`: usage, exit status 2)."""
    if args.resume and args.overwrite:
        parser.error("--resume continues the run in --out, --overwrite deletes it: pass one")
    if getattr(args, "allow_changed_settings", False) and not args.resume:
        parser.error("--allow-changed-settings applies to --resume only: add --resume or drop it")


@contextlib.contextmanager
def exit_on_error(*extra_error_types):
    """Turns `TrainingError` and `extra_error_types` into `SystemExit(f"error: {e}")`.

    The script stops there, so the run-folder locks it holds are released
    first (`training.locks`; also when `main` is called in a process that
    goes on). Any other exception passes unchanged (a bug keeps its traceback).

    Args:
        *extra_error_types: exception classes the block may raise with a
            message meant for the user (e.g. `keras_sepvit.data.DataError`,
            `ValueError` from a library call checking a flag's value).
    """
    try:
        yield
    except (TrainingError, *extra_error_types) as e:
        locks.release_all()
        raise SystemExit(f"error: {e}") from e


def epoch_steps(num_examples, batch_size, steps_per_epoch=None, where=""):
    """Steps per epoch for the training scripts, checked before any training.

    `steps_per_epoch` when given, else the full batches of `num_examples`.
    Raises `TrainingError` naming the flag to change when the size of the
    training split is unknown (None) or smaller than one batch. `where`
    describes the split in the message (e.g. " in 'digits' 'train'").
    """
    if steps_per_epoch is not None:
        return steps_per_epoch
    if num_examples is None:
        raise TrainingError(
            f"the size of the training split{where} is unknown: pass --steps-per-epoch"
        )
    if num_examples < batch_size:
        raise TrainingError(
            f"--batch-size {batch_size} is larger than the training split ({num_examples} "
            f"examples{where}), so an epoch would have no step. Use --batch-size "
            f"{num_examples} or less."
        )
    return num_examples // batch_size  # full batches: training drops the remainder


def warmup_epochs(epochs, recipe_epochs, requested=None):
    """Warm-up epochs: `requested` (must be >= 0 and < `epochs`, else
    `TrainingError`), or the recipe's, clamped to `epochs - 1` (said so)."""
    if requested is not None:
        if not 0 <= requested < epochs:
            raise TrainingError(
                f"--warmup-epochs must be >= 0 and smaller than --epochs "
                f"({epochs}). Received: --warmup-epochs {requested}"
            )
        return requested
    if recipe_epochs < epochs:
        return recipe_epochs
    print(
        f"Warm-up clamped to {epochs - 1} epochs (the recipe's {recipe_epochs} do not fit "
        f"--epochs {epochs}); set --warmup-epochs to choose."
    )
    return epochs - 1
