"""Train RetinaNet or Mask R-CNN on a SepViT backbone (COCO, a COCO-JSON folder, digit scenes).

    python examples/train_detection.py --dataset coco/2017 --data-dir ~/tensorflow_datasets \
        --backbone sepvit_tiny_dense --out runs/retinanet_t
    python examples/train_detection.py --dataset /data/my_coco_folder --out runs/det
    python examples/train_detection.py --head mask_rcnn --dataset /data/coco \
        --backbone sepvit_tiny_dense --out runs/mask_rcnn_t   # COCO folder (masks)
    python examples/train_detection.py --digit-scenes --out runs/det_digits   # offline, CPU
    python examples/train_detection.py --head mask_rcnn --digit-scenes --out runs/mrcnn_digits
    python examples/train_detection.py ... --init-from sepvit_t.keras   # from a classifier
    python examples/train_detection.py ... --resume          # continue where it stopped
    python examples/train_detection.py ... --overwrite       # start --out over (deletes its run)

Defaults are the paper's 1x schedule of --head (Sec. 4.3, the PVT/Twins
mmdetection configs it follows; the table and its sources are
keras_sepvit.tasks.detection_recipes): AdamW, weight decay 1e-4 (the paper:
1e-3 for SepViT-T, 1e-4 for S), batch 16, 12 epochs, 500 warm-up iterations,
lr x0.1 at epochs 8 and 11, images resized to a shorter side of 800 (longer
side at most 1333), horizontal flips. --head retinanet (default): keras-hub's
RetinaNet (FPN on P3-P5, P6/P7, focal loss), lr 1e-4. --head mask_rcnn:
keras_sepvit.tasks.mask_rcnn (FPN P2-P6, RPN, RoIAlign, box and mask heads),
lr 2e-4, trained on instance masks. The paper's "3x + MS": --epochs 36
--lr-steps 27,33 --min-side 480,800.

Data:
  --dataset coco/2017      tfds (train / validation splits)
  --dataset DIR            DIR/<split>/annotations.json (COCO JSON) with the
                           images at DIR/<split>/<file_name> or
                           DIR/<split>/images/<file_name>; splits train / val
                           (mask_rcnn: each annotation's polygon or RLE
                           `segmentation`; tfds coco/2017 has no masks)
  --digit-scenes           keras_sepvit.data.digit_scenes (128x128, train/test scans)
A folder is checked when loaded (docs/dense.md): invalid boxes or masks and images
that do not decode are named (--skip-invalid-annotations, --skip-unreadable skip them).

Images are padded bottom/right to a square canvas (a multiple of 32: 1344
for --max-side 1333), so every batch has one static shape. Evaluation after
every epoch: COCO box mAP through pycocotools (keras_sepvit.tasks.coco_eval),
logged as val_map / val_map50; mask_rcnn adds the mask mAP (`segm`,
keras_sepvit.tasks.coco_mask_eval) as val_mask_map / val_mask_map50. The best
val_map (mask_rcnn: val_mask_map) is kept. The data sources
and pipelines are keras_sepvit.data.detection. An --out that
already holds a run is refused unless --resume or --overwrite is given;
every epoch commits one verified checkpoint folder (keras_sepvit.training).
The data order is a function of --seed and the step, so a resumed run sees
the batches the uninterrupted one would.
"""

import argparse
import os
import runpy
import sys

# Run by path in main(), before keras_sepvit loads TensorFlow: TensorFlow without its
# start-up notices, errors kept (that file says why).
TF_LOGGING = os.path.join(os.path.dirname(__file__), os.pardir, "keras_sepvit", "tf_logging.py")


def _int_pair(text, flag):
    try:
        values = [int(v) for v in str(text).split(",")]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or min(values, default=0) < 32 or values != sorted(values):
        raise SystemExit(
            f"error: {flag} must be a side >= 32 or 'min,max' (ascending). Received: {flag} {text}"
        )
    return values[0], values[-1]


def parse_args(argv=None):
    from keras_sepvit.tasks.detection_recipes import HEADS, recipe
    from keras_sepvit.training.cli import add_run_arguments, check_run_arguments

    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    a = p.add_argument
    a("--head", default="retinanet", choices=HEADS, help="detection head")
    a("--dataset", default="coco/2017", help="tfds name, or a COCO-JSON folder (see above)")
    a("--digit-scenes", action="store_true", help="train on digit scenes (offline)")
    a("--train-split", default=None, help="default: train")
    a("--val-split", default=None, help="default: validation (tfds), val (folder), test (scenes)")
    a("--data-dir", default=None, help="tfds data directory")
    a(
        "--backbone",
        default="sepvit_tiny_dense",
        help="SepViTBackbone preset (sepvit_lite_dense, sepvit_tiny_dense, ...), 'mit_b0', or a "
        "keras-hub preset folder",
    )
    a(
        "--init-from",
        default=None,
        help="SepViT classifier for the backbone (.keras, .weights.h5, or the authors' .pth/.npz)",
    )
    add_run_arguments(p, "runs/detection", out_help="checkpoints and log")
    a("--epochs", type=int, default=12, help="training epochs (1x)")
    a("--lr-steps", default="8,11", help="epochs after which the lr is multiplied by 0.1")
    a("--batch-size", type=int, default=16, help="batch size")
    a("--lr", type=float, default=None, help="AdamW learning rate (default: --head's)")
    a("--weight-decay", type=float, default=1e-4, help="AdamW weight decay")
    a("--warmup-steps", type=int, default=500, help="linear warm-up iterations")
    a("--clip-norm", type=float, default=0.0, help="global gradient norm clip (0 = off)")
    a("--min-side", default="800", help="shorter side, or 'min,max' for multi-scale training")
    a("--max-side", type=int, default=1333, help="longer side at most")
    a("--no-flip", action="store_true", help="no random horizontal flips")
    a("--max-boxes", type=int, default=100, help="boxes per training image (more are dropped)")
    a("--anchor-size", type=float, default=None, help="anchor side / stride (default: --head's)")
    a("--head-conv-layers", type=int, default=4, help="retinanet: convs in each head")
    a("--proposals", type=int, default=None, help="mask_rcnn: RPN proposals per image")
    a("--head-width", type=int, default=256, help="mask_rcnn: FPN/mask head channels (FC 4x)")
    a("--scenes", type=int, default=2048, help="--digit-scenes: training scenes")
    a("--seed", type=int, default=0, help="random seed (weights, data order, augmentation)")
    a("--steps-per-epoch", type=int, default=None, help="limit steps (smoke tests)")
    a("--val-images", type=int, default=None, help="evaluate on the first N validation images")
    a("--eval-batch-size", type=int, default=8, help="evaluation batch size")
    a("--skip-invalid-annotations", action="store_true", help="folders: skip bad boxes (counted)")
    a("--skip-unreadable", action="store_true", help="folders: skip images that do not decode")
    args = p.parse_args(argv)
    check_run_arguments(p, args)
    for key, value in recipe(args.head, args.digit_scenes).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for flag in ("epochs", "batch_size", "max_boxes", "eval_batch_size", "head_width", "proposals"):
        if (value := getattr(args, flag)) is not None and value < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1. Received: {value}")
    args.min_side = _int_pair(args.min_side, "--min-side")
    if args.max_side < args.min_side[1]:
        p.error(
            f"--max-side must be at least the shorter side {args.min_side[1]}. "
            f"Received: --max-side {args.max_side}"
        )
    try:
        args.lr_steps = sorted(int(v) for v in args.lr_steps.split(",") if v.strip())
    except ValueError:
        p.error(f"--lr-steps must be comma-separated epochs. Received: --lr-steps {args.lr_steps}")
    return args


def canvas_side(args):
    """The square canvas every image is padded to: --max-side rounded up to 32."""
    from keras_sepvit.data import detection

    return detection.SCENE_SIDE if args.digit_scenes else detection.canvas_side(args.max_side)


def load_source(args, split):
    """The detection `keras_sepvit.data.Split` of --dataset (or --digit-scenes)."""
    from keras_sepvit.data import detection

    masks = args.head == "mask_rcnn"  # instance masks: Mask R-CNN's targets and segm mAP
    if args.digit_scenes:
        return detection.digit_scene_source(split, args.scenes, args.seed, masks=masks)
    return detection.load_source(
        args.dataset, split, args.data_dir, args.skip_invalid_annotations, args.skip_unreadable,
        masks=masks,
    )  # fmt: skip


def build_detector(args, num_classes):
    """The uncompiled detector of --head (keras_sepvit.tasks.detection_recipes)."""
    from keras_sepvit.tasks.detection_recipes import build_detector as build

    side = canvas_side(args)
    if args.backbone == "mit_b0":
        from keras_sepvit.demos.backbones import build_backbone

        backbone = build_backbone("mit_b0", side, seed=args.seed)
    elif args.backbone.startswith("sepvit") and not os.path.exists(args.backbone):
        from keras_sepvit.hub import SepViTBackbone

        try:
            backbone = SepViTBackbone.from_preset(args.backbone, image_shape=(side, side, 3))
        except ValueError as e:
            raise SystemExit(f"error: --backbone {args.backbone}: {e}") from e
    else:  # a keras-hub preset name or folder
        import keras_hub

        backbone = keras_hub.models.Backbone.from_preset(args.backbone)
    if args.init_from:  # the paper starts from an ImageNet classifier
        from keras_sepvit.convert import load_classifier_weights

        if not hasattr(backbone, "dense"):
            raise SystemExit(
                f"error: --init-from needs a SepViT backbone. Received: --backbone {args.backbone}"
            )
        try:
            load_classifier_weights(backbone, args.init_from)
        except (OSError, ValueError) as e:
            raise SystemExit(f"error: --init-from {args.init_from}: {e}") from e
    return build(
        args.head, backbone, num_classes, side, args.anchor_size, seed=args.seed,
        head_conv_layers=args.head_conv_layers, proposals=args.proposals,
        head_width=args.head_width, max_boxes=args.max_boxes,
    )  # fmt: skip


def main(argv=None):
    args = parse_args(argv)
    runpy.run_path(TF_LOGGING)["quiet_tensorflow"]()
    import keras

    from keras_sepvit import training
    from keras_sepvit.data import DataError, detection
    from keras_sepvit.tasks import detection_recipes as recipes
    from keras_sepvit.training.cli import exit_on_error
    from keras_sepvit.training.schedules import WarmupStepDecay

    if args.digit_scenes:
        args.dataset = "digit-scenes"
    tfds_name = not args.digit_scenes and not os.path.isdir(args.dataset)
    args.train_split = args.train_split or "train"
    args.val_split = args.val_split or (
        "test" if args.digit_scenes else "validation" if tfds_name else "val"
    )
    with exit_on_error(DataError):
        # Before any work: the run folder's lock; an existing run needs --resume/--overwrite; a
        # damaged one is refused, a resume with other settings too (training.NOT_SETTINGS and
        # --epochs aside: the step schedule does not depend on it, so a run can be extended;
        # --head and its flags aside on a run from before them).
        old = recipes.ignored_settings(args.out if args.resume else None, args.head)
        training.check_script_run(args, ignore=("epochs", *old))
        keras.utils.set_random_seed(args.seed)
        train = load_source(args, args.train_split)
        val = load_source(args, args.val_split)
        if val.class_names != train.class_names:
            raise DataError(
                f"the {args.train_split!r} and {args.val_split!r} splits have different "
                f"categories ({len(train.class_names)} and {len(val.class_names)})"
            )
        steps = training.epoch_steps(
            train.num_examples, args.batch_size, args.steps_per_epoch, where=f" of {args.dataset!r}"
        )
    if args.lr_steps and max(args.lr_steps) >= args.epochs:
        print(f"Note: --lr-steps {args.lr_steps} reach past --epochs {args.epochs}.")
    detector = build_detector(args, len(train.class_names))
    optimizer = keras.optimizers.AdamW(
        WarmupStepDecay(args.lr, args.warmup_steps, [e * steps for e in args.lr_steps]),
        weight_decay=args.weight_decay,
        global_clipnorm=args.clip_norm or None,
    )
    detector.compile(optimizer=optimizer)
    with exit_on_error():
        initial_epoch = training.prepare_run(detector, args.out, args.resume, args.overwrite)
    if initial_epoch >= args.epochs:
        print(f"Nothing to do: the run in {args.out} already trained {initial_epoch} epochs.")
    side = canvas_side(args)
    print(
        f"Training {args.head} on {args.backbone} ({detector.count_params():,} parameters): "
        f"{args.dataset} {args.train_split!r}, {steps} steps x {args.epochs} epochs, batch "
        f"{args.batch_size}, canvas {side}",
        flush=True,
    )
    scenes = args.digit_scenes  # kept at their size, never flipped (a mirrored 2 is no 2)
    examples = detection.eval_dataset(
        val, side, args.min_side[1], args.max_side, resize_images=not scenes, limit=args.val_images
    )
    callbacks = [
        recipes.evaluation(args.head, val, examples, args.eval_batch_size, args.val_split),
        training.AtomicCheckpoint(args.out, monitor=recipes.MONITOR[args.head]),
    ]
    batches = detection.train_dataset(
        train,
        args.batch_size,
        side,
        args.min_side,
        args.max_side,
        args.max_boxes,
        resize_images=not scenes,
        flip=not args.no_flip and not scenes,
        seed=args.seed,
        initial_step=initial_epoch * steps,
        masks=args.head == "mask_rcnn",
    )
    with exit_on_error():
        detector.fit(
            batches,
            epochs=args.epochs,
            initial_epoch=initial_epoch,
            steps_per_epoch=steps,
            callbacks=callbacks,
            shuffle=False,  # the tf.data pipeline shuffles
            verbose=2,
        )
    state = training.read_state(args.out)
    summary = training.run_summary(state, args.out, args.epochs, recipes.ALSO_LOGGED[args.head])
    if summary:
        print(summary)
    return state


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
