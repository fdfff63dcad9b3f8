"""End-to-end demo: train SepViT-Lite from scratch on real handwritten digits.

scikit-learn's bundled digits (1,797 real 8x8 scans, no download) are upscaled
to 32x32 RGB; a stratified held-out test split (20%, seed 0) is never seen in
training, and a validation split of the rest picks the best epoch. Training
uses the library's recipe (AdamW with decay exclusions, warm-up + cosine,
label smoothing, stochastic depth, atomic checkpoints) on this CPU.

    python examples/digits_demo.py [--epochs 60] [--out runs/digits] [--resume | --overwrite]

Writes model.keras, learning_curve.png, report.json and report.md to --out;
an --out that holds a run is refused unless --resume or --overwrite is given.
"""

import argparse
import json
import os
import runpy
import sys
import time

# Before keras_sepvit loads TensorFlow: without its start-up notices (that file says why).
_TF_LOGGING = os.path.join(os.path.dirname(__file__), os.pardir, "keras_sepvit", "tf_logging.py")
runpy.run_path(_TF_LOGGING)["quiet_tensorflow"]()

WARMUP_EPOCHS = 3


def parse_args(argv=None):
    from keras_sepvit import training
    from keras_sepvit.training.cli import add_run_arguments, check_run_arguments, exit_on_error

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(
        p, "runs/digits", "model, report, learning curve and the run (--out/checkpoints)"
    )
    p.add_argument("--epochs", type=int, default=60, help="training epochs")
    p.add_argument("--batch-size", type=int, default=64, help="batch size")
    p.add_argument("--image-size", type=int, default=32, help="input side (multiple of 32)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    p.add_argument(
        "--warmup-epochs",
        type=int,
        default=None,
        help=f"linear warm-up epochs (default {WARMUP_EPOCHS}, clamped to --epochs - 1 for "
        "shorter runs)",
    )
    p.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay")
    p.add_argument("--drop-path", type=float, default=0.1, help="stochastic depth rate")
    p.add_argument("--seed", type=int, default=0, help="split and training seed")
    p.add_argument(
        "--randaugment",
        type=lambda v: None if v == "none" else tuple(int(x) for x in v.split(",")),
        default=None,
        help="RandAugment 'num_ops,magnitude' or 'none'",
    )
    args = p.parse_args(argv)
    check_run_arguments(p, args)
    if args.epochs < 1:
        p.error(f"--epochs must be >= 1. Received: {args.epochs}")
    with exit_on_error():
        args.warmup_epochs = training.warmup_epochs(args.epochs, WARMUP_EPOCHS, args.warmup_epochs)
    return args


def report_lines(report):
    """The report as a markdown table; floats rounded to 4 digits."""
    rows = [(k, round(v, 4) if isinstance(v, float) else v) for k, v in report.items()]
    return ["| metric | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]


def best_epoch_text(state):
    """The best validation accuracy and the epoch (1-based) it was reached at."""
    if state["best"] is None:
        return "none"
    return f"{state['best']:.4f} (epoch {state['best_epoch'] + 1})"


def plot_learning_curve(history_csv, path):
    import matplotlib

    matplotlib.use("Agg")
    import csv

    import matplotlib.pyplot as plt

    with open(history_csv) as f:
        rows = list(csv.DictReader(f))
    epochs = [int(r["epoch"]) + 1 for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [float(r["loss"]) for r in rows], label="train")
    ax1.plot(epochs, [float(r["val_loss"]) for r in rows], label="validation")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss (label smoothing 0.1)")
    ax1.legend()
    ax2.plot(epochs, [float(r["accuracy"]) for r in rows], label="train")
    ax2.plot(epochs, [float(r["val_accuracy"]) for r in rows], label="validation")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("accuracy")
    ax2.set_ylim(0, 1)
    ax2.legend()
    fig.suptitle("SepViT-Lite from scratch on scikit-learn digits")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    import keras

    import keras_sepvit
    from keras_sepvit import data, training
    from keras_sepvit.training.cli import epoch_steps, exit_on_error

    ckpt_dir = os.path.join(args.out, "checkpoints")
    with exit_on_error(data.DataError):
        # Before any work: the run folder's lock; an existing run needs --resume/--overwrite; a
        # damaged one is refused, a resume with other settings too (training.NOT_SETTINGS aside).
        training.check_script_run(args, ckpt_dir)
        keras.utils.set_random_seed(args.seed)
        train, val, test = (data.digits_split(name, args.seed) for name in ("train", "val", "test"))
        steps = epoch_steps(train.num_examples, args.batch_size, where=" of the digits")
    os.makedirs(args.out, exist_ok=True)

    # Digits are small and not mirror-symmetric: mild crops, no flips; the
    # ImageNet-strength RandAugment/erasing/mixing are off for 8x8 scans.
    pipeline = dict(
        image_size=args.image_size,
        randaugment=args.randaugment,
        random_erasing=0.0,
        mixup_alpha=0.0,
        cutmix_alpha=0.0,
        crop_scale=(0.6, 1.0),
        crop_fraction=1.0,
        flip=False,
        seed=args.seed,
    )
    train_ds = data.make_dataset(train, True, args.batch_size, **pipeline)
    val_ds = data.make_dataset(val, False, 256, **pipeline)
    test_ds = data.make_dataset(test, False, 256, **pipeline)

    model = keras_sepvit.SepViTLite(
        input_shape=(args.image_size, args.image_size, 3),
        classes=10,
        drop_path_rate=args.drop_path,
    )
    optimizer = training.make_optimizer(
        model,
        learning_rate=args.lr,
        total_steps=steps * args.epochs,
        warmup_steps=steps * args.warmup_epochs,
        weight_decay=args.weight_decay,
    )
    start = time.perf_counter()
    with exit_on_error():
        _, initial_epoch = training.fit(
            model,
            optimizer,
            train_ds,
            val_ds,
            args.epochs,
            ckpt_dir,
            label_smoothing=0.1,
            resume=args.resume,
            overwrite=args.overwrite,
            # jit_compile: fit's default, the backend's measured one (XLA off
            # on TensorFlow; docs/training.md has the A/B).
            tensorboard=False,
            verbose=2,
        )
    train_seconds = time.perf_counter() - start

    # The model is the end of the schedule: with 144 validation images one
    # image is 0.7%, too coarse to pick an epoch by (best.weights.h5 is kept).
    test_loss, test_accuracy = model.evaluate(test_ds, verbose=0)
    model_path = os.path.join(args.out, "model.keras")
    tmp = os.path.join(args.out, "model.tmp.keras")
    model.save(tmp)
    os.replace(tmp, model_path)
    curve = os.path.join(args.out, "learning_curve.png")
    plot_learning_curve(os.path.join(ckpt_dir, training.LOG), curve)
    state = training.read_state(ckpt_dir)
    report = {
        "network": "SepViT-Lite (from scratch)",
        "data": "scikit-learn digits, 1,797 real 8x8 scans upscaled to "
        f"{args.image_size}x{args.image_size}",
        "train / val / test images": [s.num_examples for s in (train, val, test)],
        "epochs": args.epochs,
        "final validation accuracy": round(state["logs"]["val_accuracy"], 4),
        "best validation accuracy (epoch)": best_epoch_text(state),
        "held-out test accuracy": round(float(test_accuracy), 4),
        "held-out test loss": round(float(test_loss), 4),
        "training seconds (this run)": round(train_seconds, 1),
        "train images / s": round(
            steps * (args.epochs - initial_epoch) * args.batch_size / train_seconds, 1
        ),
        "checkpoint": os.path.join(ckpt_dir, training.CHECKPOINT),
        "model file": model_path,
        "learning curve": curve,
    }
    with open(os.path.join(args.out, "report.json"), "w") as f:
        json.dump(report, f, indent=2)
    lines = report_lines(report)
    with open(os.path.join(args.out, "report.md"), "w") as f:
        f.write("# Digits demo\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nHeld-out test accuracy: {test_accuracy:.4f} ({test.num_examples} images)")
    for what in ("model.keras", "learning_curve.png", "report.json", "report.md"):
        print(f"wrote {os.path.join(args.out, what)}")
    return report


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
