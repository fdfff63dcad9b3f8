"""Train a SepViT on ImageNet-1K (or any tfds dataset / image folder) with the paper's recipe.

    python examples/train_imagenet.py --variant tiny --manual-dir /data/imagenet-tars \
        --out runs/sepvit_tiny
    python examples/train_imagenet.py --dataset /data/my_images --epochs 100 --batch-size 128
    python examples/train_imagenet.py ... --resume          # continue where it stopped

Defaults are the paper's (Sec. 4.1): 300 epochs, batch 1024, AdamW with lr
1e-3 x batch / 1024, weight decay 0.05 (0.1 for B), 5 warm-up epochs (20 for
B), cosine decay, stochastic depth 0.2 / 0.3 / 0.5 (T / S / B), label smoothing
0.1, Mixup 0.8, CutMix 1.0, RandAugment, random erasing 0.25, gradient
clipping. Distribution: several GPUs use MirroredStrategy, `--tpu` a TPU.
"""

import argparse
import os


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    a = p.add_argument
    a("--variant", default="tiny", choices=["lite", "tiny", "small", "base"], help="model size")
    a(
        "--dataset",
        default="imagenet2012",
        help="tfds name, or a folder laid out as root/<split>/<class>/*.jpg",
    )
    a("--train-split", default="train", help="training split")
    a("--val-split", default="validation", help="validation split")
    a("--data-dir", default=None, help="tfds data directory")
    a(
        "--manual-dir",
        default=None,
        help="folder holding ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar (imagenet2012)",
    )
    a("--out", default="runs/train", help="checkpoints, CSV and TensorBoard logs")
    a("--resume", action="store_true", help="continue from --out (weights, optimizer, epoch)")
    a("--epochs", type=int, default=300, help="training epochs")
    a("--batch-size", type=int, default=1024, help="global batch size (all replicas)")
    a("--lr", type=float, default=None, help="peak learning rate; default 1e-3 x batch / 1024")
    a("--min-lr", type=float, default=1e-5, help="final learning rate of the cosine")
    a("--weight-decay", type=float, default=None, help="AdamW decay; default 0.05, B 0.1")
    a("--warmup-epochs", type=int, default=None, help="linear warm-up; default 5, B 20")
    a(
        "--drop-path",
        type=float,
        default=None,
        help="stochastic depth of the last block (linear rule); default 0.1/0.2/0.3/0.5",
    )
    a("--label-smoothing", type=float, default=0.1, help="label smoothing")
    a("--mixup", type=float, default=0.8, help="Mixup alpha (0 = off)")
    a("--cutmix", type=float, default=1.0, help="CutMix alpha (0 = off)")
    a("--randaugment", default="2,9", help="RandAugment 'num_ops,magnitude(0-10)', or 'none'")
    a("--random-erasing", type=float, default=0.25, help="random erasing probability")
    a("--image-size", type=int, default=224, help="training/eval side (eval: resize 256/224x)")
    a("--clip-norm", type=float, default=5.0, help="global gradient norm clip (0 = off)")
    a(
        "--mixed-precision",
        default="none",
        choices=["none", "mixed_float16", "mixed_bfloat16"],
        help="Keras dtype policy",
    )
    a("--xla", action="store_true", help="compile the train step with XLA (jit_compile)")
    a("--tpu", default=None, help="TPU name or address ('local' for a TPU VM)")
    a("--seed", type=int, default=0, help="random seed")
    a("--steps-per-epoch", type=int, default=None, help="limit steps (smoke tests)")
    a("--val-steps", type=int, default=None, help="limit validation steps")
    a("--no-tensorboard", action="store_true", help="skip TensorBoard logs")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import keras

    from keras_sepvit import data, training
    from keras_sepvit.model import VARIANTS

    keras.utils.set_random_seed(args.seed)
    if args.mixed_precision != "none":
        keras.mixed_precision.set_global_policy(args.mixed_precision)
    recipe = training.RECIPES[args.variant]
    train = data.load_split(args.dataset, args.train_split, args.data_dir, args.manual_dir)
    val = data.load_split(
        args.dataset, args.val_split, args.data_dir, args.manual_dir, train.class_names
    )
    randaugment = None
    if args.randaugment.lower() != "none":
        randaugment = tuple(int(v) for v in args.randaugment.split(","))
    common = dict(image_size=args.image_size, seed=args.seed)
    train_ds = data.make_dataset(
        train,
        True,
        args.batch_size,
        randaugment=randaugment,
        random_erasing=args.random_erasing,
        mixup_alpha=args.mixup,
        cutmix_alpha=args.cutmix,
        repeat=args.steps_per_epoch is not None,
        **common,
    )
    val_ds = data.make_dataset(val, False, args.batch_size, **common)

    steps = args.steps_per_epoch or data.steps_per_epoch(train.num_examples, args.batch_size)
    strategy = training.distribution_strategy(args.tpu)
    with strategy.scope():
        model = VARIANTS[args.variant](
            input_shape=(args.image_size, args.image_size, 3),
            classes=train.num_classes,
            drop_path_rate=(recipe["drop_path_rate"] if args.drop_path is None else args.drop_path),
        )
        warmup = recipe["warmup_epochs"] if args.warmup_epochs is None else args.warmup_epochs
        optimizer = training.make_optimizer(
            model,
            learning_rate=args.lr or training.scaled_learning_rate(args.batch_size),
            total_steps=steps * args.epochs,
            warmup_steps=steps * warmup,
            weight_decay=(
                recipe["weight_decay"] if args.weight_decay is None else args.weight_decay
            ),
            clipnorm=args.clip_norm,
            min_learning_rate=args.min_lr,
        )
        training.fit(
            model,
            optimizer,
            train_ds,
            val_ds,
            args.epochs,
            args.out,
            label_smoothing=args.label_smoothing,
            resume=args.resume,
            jit_compile=args.xla,
            steps_per_epoch=args.steps_per_epoch,
            validation_steps=args.val_steps,
            tensorboard=not args.no_tensorboard,
        )
    print(
        f"Best weights: {os.path.join(args.out, 'best.weights.h5')}; "
        f"last checkpoint: {os.path.join(args.out, 'last.keras')}"
    )


if __name__ == "__main__":
    main()
