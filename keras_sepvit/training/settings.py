"""A run's settings: stored when it starts, compared when it is resumed.

`--resume` promises to continue a run exactly, so a resume with another
recipe (`--resume --lr 1e12`) is refused, naming each difference, unless
`--allow-changed-settings` is given; then each change is printed and appended
to the run's `settings.log`, and `settings.json` holds the settings in force.

The settings of a script are its parsed flags (`run_settings(args)`) minus
`NOT_SETTINGS`, the flags that say where or how a run is carried out but do
not change its result; a script adds its own through `ignore` (the detection
script: `--epochs`, its step schedule does not depend on the run's length).
A run folder from before settings were stored resumes with a note, and its
settings are stored from then on.
"""

import datetime
import json
import os

from keras_sepvit.training.errors import TrainingError

SETTINGS, SETTINGS_LOG = "settings.json", "settings.log"

# Flags (argparse dest names) that do not change a run's result, with why.
NOT_SETTINGS = {
    "out": "the run folder itself",
    "resume": "how the run is started",
    "overwrite": "how the run is started",
    "allow_changed_settings": "how the run is started",
    "verbose": "progress output",
    "no_tensorboard": "logs only",
    "backend": "the engine; a checkpoint resumes on any backend",
    "jit_compile": "compilation only",
    "xla": "compilation only",
    "data_dir": "where the data is, not which data",
    "manual_dir": "where the data is, not which data",
    "tpu": "where the run executes",
    "coordinator": "where the run executes (multi-host JAX)",
    "num_processes": "where the run executes (multi-host JAX)",
    "process_id": "where the run executes (multi-host JAX)",
    "eval_batch_size": "evaluation batching only",
    "test_scales": "the test after training only",
    "test_flip": "the test after training only",
}


class SettingsChangedError(TrainingError):
    """`--resume` with settings that differ from the run's stored ones."""


def flag(name):
    """The command-line spelling of an argparse dest name: `clip_norm` -> `--clip-norm`."""
    return "--" + name.replace("_", "-")


def run_settings(args, ignore=()):
    """The settings of a run: the script's parsed `args` (an `argparse.Namespace` or a
    dict) minus `NOT_SETTINGS` and the names in `ignore`, as JSON values."""
    values = args if isinstance(args, dict) else vars(args)
    kept = {k: v for k, v in sorted(values.items()) if k not in NOT_SETTINGS and k not in ignore}
    return json.loads(json.dumps(kept, default=str))


def _text(value):
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None:
        return "not set"
    if isinstance(value, float):
        short = format(value, "g")
        return short if float(short) == value else repr(value)
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


_MISSING = object()


def setting_changes(stored, current):
    """Each difference between the run's `stored` settings and the `current` ones,
    as `--lr: run 0.001, now 1e+12` (sorted by flag)."""
    changes = []
    for name in sorted(set(stored) | set(current)):
        before, now = stored.get(name, _MISSING), current.get(name, _MISSING)
        if before == now:
            continue
        before = "not recorded" if before is _MISSING else _text(before)
        now = "not a flag any more" if now is _MISSING else _text(now)
        changes.append(f"{flag(name)}: run {before}, now {now}")
    return changes


def read_settings(directory):
    """The stored settings of the run in `directory`, or None when there are none.

    Raises `TrainingError` naming the file when it is not a JSON object.
    """
    path = os.path.join(directory, SETTINGS)
    try:
        with open(path) as f:
            stored = json.load(f)
    except FileNotFoundError:
        return None
    except ValueError as e:
        stored = e
    if not isinstance(stored, dict) or not isinstance(stored.get("settings"), dict):
        raise TrainingError(
            f"{path} is damaged (not the settings this library writes). Restore it, or delete "
            "it to resume without checking the settings (they are stored again)."
        )
    return stored["settings"]


def write_settings(directory, settings):
    """Writes `settings.json` atomically (a temporary file renamed into place)."""
    path = os.path.join(directory, SETTINGS)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"settings": settings}, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def log_changes(directory, changes):
    """Appends one line per change, with the time, to the run's `settings.log`."""
    when = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %z")
    with open(os.path.join(directory, SETTINGS_LOG), "a") as f:
        for change in changes:
            f.write(f"{when} resumed with --allow-changed-settings: {change}\n")
        f.flush()
        os.fsync(f.fileno())


def clear_settings(directory):
    """Deletes a run's stored settings and their log (`--overwrite`)."""
    for name in (SETTINGS, SETTINGS_LOG, SETTINGS + ".tmp"):
        path = os.path.join(directory, name)
        if os.path.exists(path):
            os.remove(path)


def check_settings(directory, settings, allow_changed=False, quiet=False):
    """Compares `settings` with those stored in `directory` for a resume.

    Returns the changes (empty when equal, or when nothing is stored: a run
    from before settings were stored, said in a note). Raises
    `SettingsChangedError` naming each change unless `allow_changed`; with it,
    the changes are printed (the caller logs them once the run goes on).
    `quiet` prints nothing (workers other than the chief).
    """
    stored = read_settings(directory)
    if stored is None:
        if not quiet:
            print(
                f"Note: {directory} holds no stored settings (a run from before they were "
                f"stored); this run's are stored in {SETTINGS} now, and later resumes are "
                "checked against them."
            )
        return []
    changes = setting_changes(stored, settings)
    if changes and not allow_changed:
        raise SettingsChangedError(
            f"--resume continues the run in {directory} exactly, but these settings differ "
            f"from the run's ({os.path.join(directory, SETTINGS)}): {'; '.join(changes)}. "
            "Pass the run's values, or add --allow-changed-settings to continue with the new "
            f"ones (each change is written to {SETTINGS_LOG}), or start over with --overwrite."
        )
    if changes and not quiet:
        for change in changes:
            print(f"Changed setting (--allow-changed-settings): {change}")
    return changes
