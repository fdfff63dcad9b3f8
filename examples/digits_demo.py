"""End-to-end demo: train SepViT-Lite from scratch on real handwritten digits.

scikit-learn's bundled digits (1,797 real 8x8 scans, no download) are upscaled
to 32x32 RGB; a stratified held-out test split (20%, seed 0) is never seen in
training, and a validation split of the rest picks the best epoch. Training
uses the library's recipe (AdamW with decay exclusions, warm-up + cosine,
label smoothing, stochastic depth, atomic checkpoints) on this CPU.

    python examples/digits_demo.py [--epochs 60] [--out runs/digits] [--resume]

Writes model.keras, learning_curve.png, report.json and report.md to --out.
"""

import argparse
import json
import os
import sys
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/digits", help="output folder")
    p.add_argument("--epochs", type=int, default=60, help="training epochs")
    p.add_argument("--batch-size", type=int, default=64, help="batch size")
    p.add_argument("--image-size", type=int, default=32, help="input side (multiple of 32)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    p.add_argument("--warmup-epochs", type=int, default=3, help="linear warm-up epochs")
    p.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay")
    p.add_argument("--drop-path", type=float, default=0.1, help="stochastic depth rate")
    p.add_argument("--seed", type=int, default=0, help="split and training seed")
    p.add_argument(
        "--randaugment",
        type=lambda v: None if v == "none" else tuple(int(x) for x in v.split(",")),
        default=None,
        help="RandAugment 'num_ops,magnitude' or 'none'",
    )
    p.add_argument("--resume", action="store_true", help="continue from --out/checkpoints")
    return p.parse_args(argv)


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

    keras.utils.set_random_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)
    splits = data.digits_splits(args.seed)

    def split(name):
        return data.array_split(*splits[name], class_names=[str(i) for i in range(10)])

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
    train_ds = data.make_dataset(split("train"), True, args.batch_size, **pipeline)
    val_ds = data.make_dataset(split("val"), False, 256, **pipeline)
    test_ds = data.make_dataset(split("test"), False, 256, **pipeline)

    model = keras_sepvit.SepViTLite(
        input_shape=(args.image_size, args.image_size, 3),
        classes=10,
        drop_path_rate=args.drop_path,
    )
    steps = data.steps_per_epoch(len(splits["train"][0]), args.batch_size)
    optimizer = training.make_optimizer(
        model,
        learning_rate=args.lr,
        total_steps=steps * args.epochs,
        warmup_steps=steps * args.warmup_epochs,
        weight_decay=args.weight_decay,
    )
    ckpt_dir = os.path.join(args.out, "checkpoints")
    start = time.perf_counter()
    _, initial_epoch = training.fit(
        model,
        optimizer,
        train_ds,
        val_ds,
        args.epochs,
        ckpt_dir,
        label_smoothing=0.1,
        resume=args.resume,
        jit_compile=True,
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
    plot_learning_curve(os.path.join(ckpt_dir, "log.csv"), curve)
    state = training.read_state(ckpt_dir)
    report = {
        "network": "SepViT-Lite (from scratch)",
        "data": "scikit-learn digits, 1,797 real 8x8 scans upscaled to "
        f"{args.image_size}x{args.image_size}",
        "train / val / test images": [len(splits[s][0]) for s in ("train", "val", "test")],
        "epochs": args.epochs,
        "final validation accuracy": state["logs"]["val_accuracy"],
        "best validation accuracy (epoch picked by)": state["best"],
        "held-out test accuracy": float(test_accuracy),
        "held-out test loss": float(test_loss),
        "training seconds (this run)": round(train_seconds, 1),
        "train images / s": round(
            steps * (args.epochs - initial_epoch) * args.batch_size / train_seconds, 1
        ),
        "model file": model_path,
        "learning curve": curve,
    }
    with open(os.path.join(args.out, "report.json"), "w") as f:
        json.dump(report, f, indent=2)
    lines = ["| metric | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in report.items()]
    with open(os.path.join(args.out, "report.md"), "w") as f:
        f.write("# Digits demo\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nHeld-out test accuracy: {test_accuracy:.4f} ({len(splits['test'][0])} images)")
    for what in ("model.keras", "learning_curve.png", "report.json", "report.md"):
        print(f"wrote {os.path.join(args.out, what)}")
    return report


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
