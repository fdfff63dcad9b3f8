"""Train a SepViT on ImageNet-1K (or any tfds dataset / image folder) with the paper's recipe.

    python examples/train_imagenet.py --variant tiny --manual-dir /data/imagenet-tars \
        --out runs/sepvit_tiny
    python examples/train_imagenet.py --dataset /data/my_images --epochs 100 --batch-size 128
    python examples/train_imagenet.py ... --resume          # continue where it stopped
    python examples/train_imagenet.py ... --overwrite       # start --out over (deletes its run)
    python examples/train_imagenet.py --dataset digits --variant lite --image-size 32 \
        --batch-size 64 --epochs 30 --backend jax           # scikit-learn digits, any backend

Defaults are the paper's (Sec. 4.1): 300 epochs, batch 1024, AdamW with lr
1e-3 x batch / 1024, weight decay 0.05 (0.1 for B), 5 warm-up epochs (20 for
B), cosine decay, stochastic depth 0.2 / 0.3 / 0.5 (T / S / B), label smoothing
0.1, Mixup 0.8, CutMix 1.0, RandAugment, random erasing 0.25, gradient
clipping.

Backends (`--backend` or KERAS_BACKEND): tensorflow, jax, torch; the input
pipeline is tf.data for all three. Distribution: TensorFlow uses
MultiWorkerMirroredStrategy when TF_CONFIG (or a SLURM job of several tasks)
describes a cluster, MirroredStrategy on several GPUs, `--tpu` a TPU; JAX
uses keras.distribution.DataParallel over all devices, across hosts with
`--coordinator/--num-processes/--process-id`; PyTorch one device. The
README's "Training on many GPUs / TPUs / machines" gives the commands.

An --out that already holds a run is refused unless --resume or --overwrite
is given. Every epoch commits one verified checkpoint folder (--out/checkpoint);
a non-finite loss, a damaged checkpoint or a failed write stops with exit
status 1 and a message that says what to do.
"""

import argparse
import os
import runpy
import sys

# Run by path in main(), before keras_sepvit loads TensorFlow: TensorFlow without its
# start-up notices, errors kept (that file says why).
TF_LOGGING = os.path.join(os.path.dirname(__file__), os.pardir, "keras_sepvit", "tf_logging.py")


BACKENDS = ("tensorflow", "jax", "torch")


def backend_flag(argv=None):
    """--backend alone, read before Keras (and so keras_sepvit) is imported."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--backend", default=None, choices=BACKENDS)
    return pre.parse_known_args(argv)[0].backend


def parse_args(argv=None):
    from keras_sepvit.training.cli import add_run_arguments, check_run_arguments

    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    a = p.add_argument
    a(
        "--backend",
        default=None,
        choices=BACKENDS,
        help="Keras backend (default: $KERAS_BACKEND, else tensorflow)",
    )
    a("--variant", default="tiny", choices=["lite", "tiny", "small", "base"], help="model size")
    a(
        "--dataset",
        default="imagenet2012",
        help="tfds name, a folder laid out as root/<split>/<class>/*.jpg, or 'digits' "
        "(scikit-learn's 8x8 scans; splits train/val/test, e.g. 'train[:256]')",
    )
    a("--train-split", default="train", help="training split")
    a("--val-split", default="validation", help="validation split")
    a("--data-dir", default=None, help="tfds data directory")
    a(
        "--manual-dir",
        default=None,
        help="folder holding ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar (imagenet2012)",
    )
    add_run_arguments(p, "runs/train")
    a("--epochs", type=int, default=300, help="training epochs")
    a("--batch-size", type=int, default=1024, help="global batch size (all replicas)")
    a("--lr", type=float, default=None, help="peak learning rate; default 1e-3 x batch / 1024")
    a("--min-lr", type=float, default=1e-5, help="final learning rate of the cosine")
    a("--weight-decay", type=float, default=None, help="AdamW decay; default 0.05, B 0.1")
    a(
        "--warmup-epochs",
        type=int,
        default=None,
        help="linear warm-up; default 5, B 20 (clamped to --epochs - 1 for shorter runs)",
    )
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
    a(
        "--jit-compile",
        default="auto",
        choices=["auto", "on", "off"],
        help="compile the train step (XLA on TF/JAX, torch.compile); auto: the measured "
        "per-backend default (training.JIT_COMPILE)",
    )
    a("--xla", action="store_true", help="same as --jit-compile on")
    a(
        "--no-augment",
        action="store_true",
        help="no crop/flip/RandAugment/erasing/Mixup/CutMix and no shuffling: the same batches "
        "on any number of workers or devices, and after --resume (for checks)",
    )
    a("--tpu", default=None, help="TPU name or address ('local' for a TPU VM); TensorFlow")
    a(
        "--coordinator",
        default=None,
        help="JAX multi-host: host:port of process 0 (or KERAS_DISTRIBUTION_JOB_ADDRESSES)",
    )
    a("--num-processes", type=int, default=None, help="JAX multi-host: number of processes")
    a("--process-id", type=int, default=None, help="JAX multi-host: this process (0-based)")
    a("--seed", type=int, default=0, help="random seed")
    a("--steps-per-epoch", type=int, default=None, help="limit steps (smoke tests)")
    a("--val-steps", type=int, default=None, help="limit validation steps")
    a("--no-tensorboard", action="store_true", help="skip TensorBoard logs")
    a(
        "--skip-unreadable",
        action="store_true",
        help="image folders: skip files that do not decode as images (counted) instead of stopping",
    )
    args = p.parse_args(argv)
    check_run_arguments(p, args)
    if args.xla:
        args.jit_compile = "on"
    for flag in ("epochs", "batch_size"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1. Received: {getattr(args, flag)}")
    return args


def select_backend(backend):
    """Sets KERAS_BACKEND before Keras loads; refuses a switch once it has loaded."""
    if backend is None:
        return os.environ.get("KERAS_BACKEND", "tensorflow")
    if "keras" in sys.modules:
        import keras

        if keras.backend.backend() != backend:
            raise SystemExit(
                f"error: Keras is already loaded with the {keras.backend.backend()!r} backend in "
                f"this process; run the script in a new process. Received: --backend {backend}"
            )
    os.environ["KERAS_BACKEND"] = backend
    return backend


def load_data(args, split, class_names=None):
    """A `data.Split` of --dataset: tfds name, image folder or 'digits'."""
    from keras_sepvit import data

    if args.dataset == "digits":
        return data.digits_split(split, args.seed)
    return data.load_split(
        args.dataset, split, args.data_dir, args.manual_dir, class_names,
        skip_unreadable=args.skip_unreadable,
    )  # fmt: skip


def main(argv=None):
    backend = select_backend(backend_flag(argv))
    args = parse_args(argv)
    runpy.run_path(TF_LOGGING)["quiet_tensorflow"]()
    import keras

    from keras_sepvit import data, training
    from keras_sepvit.model import VARIANTS
    from keras_sepvit.training.cli import epoch_steps, exit_on_error

    multi_host = args.coordinator or args.num_processes
    with exit_on_error(ValueError):
        if multi_host or os.environ.get("KERAS_DISTRIBUTION_NUM_PROCESSES"):
            training.initialize_multi_host(args.coordinator, args.num_processes, args.process_id)
        # Before any work (the chief is known now): the run folder's lock, an existing run
        # needs --resume/--overwrite, a resume its settings (training.NOT_SETTINGS aside).
        training.check_script_run(args)
        # Before any TensorFlow op: a multi-worker strategy must come first.
        scope = training.distribution_scope(args.tpu)
    with scope:  # the data pipeline and the model are built in it
        keras.utils.set_random_seed(args.seed)
        if args.mixed_precision != "none":
            keras.mixed_precision.set_global_policy(args.mixed_precision)
        recipe = training.RECIPES[args.variant]
        with exit_on_error(data.DataError):
            train = load_data(args, args.train_split)
            val = load_data(args, args.val_split, train.class_names)
            where = f" in {args.dataset!r} {args.train_split!r}"
            steps = epoch_steps(train.num_examples, args.batch_size, args.steps_per_epoch, where)
            warmup = training.warmup_epochs(
                args.epochs, recipe["warmup_epochs"], args.warmup_epochs
            )
        randaugment = None
        if args.randaugment.lower() != "none":
            randaugment = tuple(int(v) for v in args.randaugment.split(","))
        common = dict(image_size=args.image_size, seed=args.seed)
        repeat = args.steps_per_epoch is not None
        if args.no_augment:  # the evaluation transform, fixed order, full batches only
            train_ds = data.make_dataset(
                train, False, args.batch_size, drop_remainder=True, **common
            )
            train_ds = train_ds.repeat() if repeat else train_ds
        else:
            train_ds = data.make_dataset(
                train,
                True,
                args.batch_size,
                randaugment=randaugment,
                random_erasing=args.random_erasing,
                mixup_alpha=args.mixup,
                cutmix_alpha=args.cutmix,
                repeat=repeat,
                **common,
            )
        val_ds = data.make_dataset(val, False, args.batch_size, **common)

        replicas = training.replicas()
        if args.batch_size % replicas:
            raise SystemExit(
                f"error: the global batch must split evenly over the {replicas} replicas. "
                f"Received: --batch-size {args.batch_size}"
            )
        if backend == "tensorflow":
            # Workers of a TF cluster: tfds reads disjoint TFRecord files when there are
            # enough, else (and for folders / arrays) each keeps its part of every batch.
            policy = (
                "auto" if args.dataset != "digits" and not os.path.isdir(args.dataset) else "data"
            )
            train_ds = training.shard_by(train_ds, policy)
            val_ds = training.shard_by(val_ds, policy)
        jit = {"on": True, "off": False}.get(args.jit_compile, training.default_jit_compile())
        chief = training.is_chief()
        model = VARIANTS[args.variant](
            input_shape=(args.image_size, args.image_size, 3),
            classes=train.num_classes,
            drop_path_rate=(recipe["drop_path_rate"] if args.drop_path is None else args.drop_path),
        )
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
        if chief:
            print(
                f"Backend {backend}, {replicas} replica(s), global batch {args.batch_size}, "
                f"jit_compile={jit}"
            )
        with exit_on_error():
            history, initial_epoch = training.fit(
                model,
                optimizer,
                train_ds,
                val_ds,
                args.epochs,
                args.out,
                label_smoothing=args.label_smoothing,
                resume=args.resume,
                jit_compile=jit,
                steps_per_epoch=args.steps_per_epoch,
                validation_steps=args.val_steps,
                tensorboard=not args.no_tensorboard,
                verbose="auto" if chief else 0,
                overwrite=args.overwrite,
            )
    summary = training.run_summary(training.read_state(args.out), args.out, args.epochs)
    if summary and chief:
        print(summary)
    return history, initial_epoch


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
