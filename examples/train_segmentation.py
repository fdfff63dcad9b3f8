"""Train a semantic segmenter (Semantic FPN, UperNet or DeepLabV3+) on a SepViT backbone.

    python examples/train_segmentation.py --out runs/fpn_ade     # ADE20K (tfds scene_parse150)
    python examples/train_segmentation.py --dataset /data/ADEChallengeData2016 \
        --val-split validation --out runs/fpn_ade                # mmseg's folder layout
    python examples/train_segmentation.py --digit-scenes --iterations 600 --lr 1e-3 \
        --out runs/digit_fpn                                     # offline, CPU minutes
    python examples/train_segmentation.py --head upernet --backbone sepvit_tiny \
        --test-scales paper --test-flip --out runs/upernet_ade   # UperNet 160k, + MS mIoU
    python examples/train_segmentation.py ... --resume     # continue where it stopped
    python examples/train_segmentation.py ... --overwrite  # start --out over (deletes its run)

Defaults are the paper's setting of --head on ADE20K (Sec. 4.2; the table,
with the why, is `keras_sepvit.tasks.segmentation_recipes`): 512x512 crops,
batch 16, AdamW, poly decay; Semantic FPN 80k iterations at 1e-4; UperNet
160k at 6e-5 (auxiliary FCN head, loss weight 0.4); mmsegmentation's
augmentation. ADE20K's label 0 ("other") is ignored (label 255) and 1..150
become 0..149. Evaluation: mean IoU on the validation split (images fitted
into the crop size and padded; the padding is ignored); --test-scales /
--test-flip add a multi-scale mIoU at the end ("paper": 0.5 to 1.75 by
0.25). Backbones start from random weights unless --init-from gives a
SepViT classifier (`.weights.h5`, `.keras`, or the authors' `.pth`/`.npz`).

tfds' `scene_parse150` builder downloads the scene-parsing *instance*
annotations, whose PNGs carry the class in their first channel; for the
standard 150-class benchmark, point --dataset at ADEChallengeData2016 (the
folder layout `root/images/<split>/*.jpg`, `root/annotations/<split>/*.png`).

An --out that already holds a run is refused unless --resume or --overwrite
is given. Every epoch (--steps-per-epoch iterations) commits one verified
checkpoint folder (--out/checkpoint); a resumed run sees exactly the batches
and learning rates of an uninterrupted one; a non-finite loss, a damaged
checkpoint or a failed write stops with exit status 1 and a message that
says what to do.
"""

import argparse
import os
import runpy
import sys

# Run by path in main(), before keras_sepvit loads TensorFlow: TensorFlow without its
# start-up notices, errors kept (that file says why).
TF_LOGGING = os.path.join(os.path.dirname(__file__), os.pardir, "keras_sepvit", "tf_logging.py")

BACKBONES = ("sepvit_lite", "sepvit_tiny", "sepvit_small", "sepvit_base", "mit_b0")
DATASETS = {"scene_parse150": (150, True, "test")}  # name: (classes, reduce zero label, val)


def parse_args(argv=None):
    from keras_sepvit.tasks.multi_scale import parse_scales
    from keras_sepvit.tasks.segmentation_recipes import HEADS, recipe
    from keras_sepvit.training.cli import add_run_arguments, check_run_arguments

    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    a = p.add_argument
    a(
        "--dataset",
        default="scene_parse150",
        help="tfds name, or a folder root/images/<split>/*.jpg + root/annotations/<split>/*.png",
    )
    a("--digit-scenes", action="store_true", help="the built-in offline digit scenes instead")
    a("--num-train", type=int, default=2000, help="digit scenes: training scenes")
    a("--num-test", type=int, default=300, help="digit scenes: held-out scenes")
    a("--train-split", default="train", help="training split")
    a("--val-split", default=None, help="validation split; default 'test' for scene_parse150")
    a("--data-dir", default=None, help="tfds data directory")
    a("--num-classes", type=int, default=None, help="classes; default 150 (ADE20K), 11 (digits)")
    a(
        "--reduce-zero-label",
        default="auto",
        choices=["auto", "yes", "no"],
        help="label 0 -> ignored, c -> c - 1 (auto: yes for ADE20K)",
    )
    a("--head", default="semantic_fpn", choices=HEADS, help="task head")
    a("--backbone", default="sepvit_lite", choices=BACKBONES, help="backbone")
    a("--init-from", default=None, help="SepViT classifier weights for the backbone")
    a("--norm", default="group", choices=["group", "batch"], help="Semantic FPN head norm")
    a("--fpn-channels", type=int, default=256, help="Semantic FPN: FPN channels")
    a("--head-channels", type=int, default=None, help="head channels (FPN 128, UperNet 512)")
    a("--crop-size", type=int, default=None, help="training crop / eval size; default 512")
    add_run_arguments(p, "runs/segmentation")
    paper = "default: the paper's for --head"
    a("--iterations", type=int, default=None, help=f"training iterations ({paper})")
    a("--steps-per-epoch", type=int, default=None, help="iterations between checkpoints/evals")
    a("--batch-size", type=int, default=16, help="global batch size")
    a("--lr", type=float, default=None, help=f"peak learning rate, AdamW ({paper})")
    a("--weight-decay", type=float, default=None, help=f"AdamW weight decay ({paper})")
    a("--warmup-steps", type=int, default=None, help=f"linear warm-up iterations ({paper})")
    a("--poly-power", type=float, default=None, help=f"poly decay power ({paper})")
    a("--clip-norm", type=float, default=0.0, help="global gradient norm clip (0 = off)")
    a("--drop-path", type=float, default=None, help=f"stochastic depth ({paper}, variant)")
    a("--dropout", type=float, default=0.1, help="dropout before the classifier")
    a("--seed", type=int, default=0, help="random seed")
    a("--val-steps", type=int, default=None, help="limit validation batches")
    a("--test-scales", default="1.0", help="final multi-scale test: 'paper' or e.g. 0.5,1,1.5")
    a("--test-flip", action="store_true", help="final test: also the left-right mirrored image")
    a("--no-tensorboard", action="store_true", help="skip TensorBoard logs")
    a("--verbose", type=int, default=2, choices=[0, 1, 2], help="Keras progress output")
    a("--skip-unreadable", action="store_true", help="folders: skip files that do not decode")
    args = p.parse_args(argv)
    check_run_arguments(p, args)
    for key, value in recipe(args.head, args.backbone, args.iterations).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    try:
        args.test_scales = parse_scales(args.test_scales)
    except ValueError as e:
        p.error(f"--test-scales: {e}")
    for flag in ("iterations", "batch_size"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1. Received: {getattr(args, flag)}")
    if args.digit_scenes:
        args.num_classes = args.num_classes or 11
        args.crop_size = args.crop_size or 64
        args.reduce_zero_label = (
            "no" if args.reduce_zero_label == "auto" else args.reduce_zero_label
        )
    else:
        known = DATASETS.get(args.dataset)
        if args.num_classes is None:
            if known is None:
                p.error(f"--num-classes is needed for --dataset {args.dataset!r}")
            args.num_classes = known[0]
        if args.reduce_zero_label == "auto":
            ade = known is not None or "ADEChallenge" in args.dataset
            args.reduce_zero_label = "yes" if ade else "no"
        if args.val_split is None:
            args.val_split = known[2] if known else "validation"
        args.crop_size = args.crop_size or 512
    if args.crop_size < 32 or args.crop_size % 32:
        p.error(f"--crop-size must be a multiple of 32. Received: {args.crop_size}")
    if args.steps_per_epoch is None:
        args.steps_per_epoch = min(args.iterations, 2000)
    if args.iterations % args.steps_per_epoch:
        p.error(
            f"--iterations must be a multiple of --steps-per-epoch (one checkpoint per epoch). "
            f"Received: --iterations {args.iterations}, --steps-per-epoch {args.steps_per_epoch}"
        )
    if args.warmup_steps >= args.iterations:
        p.error(
            f"--warmup-steps must be smaller than --iterations ({args.iterations}). "
            f"Received: {args.warmup_steps}"
        )
    return args


def build_model(args):
    """The segmenter of --head on --backbone, uncompiled."""
    from keras_sepvit.demos import backbones
    from keras_sepvit.tasks.segmentation_recipes import build_segmenter

    backbone = backbones.build_backbone(
        args.backbone, args.crop_size, drop_path_rate=args.drop_path
    )
    if args.init_from:
        if not args.backbone.startswith("sepvit"):
            raise SystemExit(f"error: --init-from needs a SepViT backbone, not {args.backbone}")
        from keras_sepvit.convert import load_classifier_weights

        try:
            load_classifier_weights(backbone, args.init_from)
        except (OSError, ValueError) as e:
            raise SystemExit(f"error: --init-from {args.init_from}: {e}") from e
    return build_segmenter(
        args.head,
        backbone,
        args.num_classes,
        fpn_channels=args.fpn_channels,
        head_channels=args.head_channels,
        norm=args.norm,
        dropout=args.dropout,
    )


def load_sources(args):
    """The training and validation splits, checked whole (before the run folder changes)."""
    from keras_sepvit import training
    from keras_sepvit.data import segmentation as sd

    if args.digit_scenes:
        train, val = sd.digit_scene_splits(args.num_train, args.num_test, args.crop_size, args.seed)
    else:
        check = (args.num_classes, args.reduce_zero_label == "yes", args.skip_unreadable)
        train = sd.load_split(args.dataset, args.train_split, args.data_dir, *check)
        val = sd.load_split(args.dataset, args.val_split, args.data_dir, *check)
    training.epoch_steps(train.num_examples, args.batch_size)  # an epoch of at least one step
    return train, val


def load_data(args, sources, initial_epoch, epochs):
    from keras_sepvit.data import segmentation as sd

    train, val = sources
    if args.digit_scenes:
        augment = dict(scale_range=None, flip=False)  # mirrored digits are other digits
    else:
        augment = dict(base_scale=(4 * args.crop_size, args.crop_size))
    reduce = args.reduce_zero_label == "yes"
    train_ds = sd.train_dataset(
        train,
        args.batch_size,
        args.steps_per_epoch,
        epochs,
        crop_size=args.crop_size,
        initial_epoch=initial_epoch,
        seed=args.seed,
        reduce_zero_label=reduce,
        **augment,
    )
    val_ds = sd.eval_dataset(val, args.batch_size, args.crop_size, reduce_zero_label=reduce)
    if args.val_steps:
        val_ds = val_ds.take(args.val_steps)
    return train_ds, val_ds, train.num_examples, val.num_examples


def fit(model, args, sources, epochs):
    """`model.fit` with keras_sepvit.training's atomic checkpoints and exact resume."""
    from keras_sepvit import training

    initial_epoch = training.prepare_run(model, args.out, args.resume, args.overwrite)
    if initial_epoch >= epochs:
        print(f"{args.out} already finished its {epochs} epochs.")
        return None, initial_epoch
    train_ds, val_ds, num_train, num_val = load_data(args, sources, initial_epoch, epochs)
    print(
        f"Training {args.head} on {args.backbone}: {num_train} training / {num_val} validation "
        f"images, {args.num_classes} classes, {args.iterations} iterations of batch "
        f"{args.batch_size} ({epochs} epochs of {args.steps_per_epoch}), crop {args.crop_size}."
    )
    history = model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=epochs,
        initial_epoch=initial_epoch,
        steps_per_epoch=args.steps_per_epoch,
        callbacks=training.training_callbacks(
            args.out, monitor="val_mean_iou", tensorboard=not args.no_tensorboard
        ),
        verbose=args.verbose,
    )
    return history, initial_epoch


def multi_scale_miou(model, args, sources):
    """The final model's mIoU on the validation split with --test-scales / --test-flip."""
    from keras_sepvit.data import segmentation as sd
    from keras_sepvit.tasks.multi_scale import evaluate_multi_scale

    settings = vars(args) | {"crop_size": None, "init_from": None}  # weights: set below
    any_size = build_model(argparse.Namespace(**settings))
    any_size.set_weights(model.get_weights())  # the trained model, at any input size
    reduce = args.reduce_zero_label == "yes"
    data = sd.eval_dataset(sources[1], args.batch_size, args.crop_size, reduce_zero_label=reduce)
    data = data.take(args.val_steps) if args.val_steps else data
    miou = evaluate_multi_scale(any_size, data, args.num_classes, args.test_scales, args.test_flip)
    scales = ", ".join(f"{s:g}" for s in args.test_scales) + (", flip" if args.test_flip else "")
    print(f"Multi-scale test (scales {scales}): mIoU {miou:.4f}")
    return miou


def main(argv=None):
    args = parse_args(argv)
    runpy.run_path(TF_LOGGING)["quiet_tensorflow"]()
    import keras

    from keras_sepvit import training
    from keras_sepvit.data import DataError
    from keras_sepvit.tasks.segmentation_recipes import compile_segmenter
    from keras_sepvit.training.cli import exit_on_error

    # First the run folder's lock and checks (existing run, damage, changed settings), then
    # the data, checked whole: a bad file is refused before --overwrite deletes anything.
    with exit_on_error(DataError):
        training.check_script_run(args)
        sources = load_sources(args)
    keras.utils.set_random_seed(args.seed)
    epochs = args.iterations // args.steps_per_epoch
    model = build_model(args)
    compile_segmenter(
        model, args.num_classes, args.lr, args.weight_decay, args.iterations,
        args.warmup_steps, args.poly_power, args.clip_norm,
    )  # fmt: skip
    with exit_on_error(DataError):
        history, initial_epoch = fit(model, args, sources, epochs)
    summary = training.run_summary(training.read_state(args.out), args.out, epochs)
    if summary:
        print(summary)
    if args.test_scales != (1.0,) or args.test_flip:
        with exit_on_error(DataError):
            multi_scale_miou(model, args, sources)
    return history, initial_epoch


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
