"""Dense-prediction demo: SepViT-Lite vs. MiT-B0 on digit scenes, detection and segmentation.

Digit scenes (`keras_sepvit.data.digit_scenes`: real handwritten digits from
scikit-learn, no download, pasted on noisy canvases with boxes and masks;
held-out scenes use scans no training scene uses) train, from random
initialisation and with the same budget per task:
  - RetinaNet (keras-hub's `RetinaNetObjectDetector`, FPN P3-P7) on the
    authors' dense SepViT-Lite and on keras-hub's MiT-B0 (SegFormer's
    encoder), scored with COCO mAP through pycocotools;
  - Semantic FPN (`keras_sepvit.tasks.semantic_fpn`) on the same two
    backbones, scored with `keras.metrics.MeanIoU` (background + 10 digits).

    python examples/dense_demo.py [--out runs/dense] [--quick] [--export]

Prints and writes a table (mAP@0.5, mAP, mIoU, training time) to
`--out/report.md` and `report.json`, and draws SepViT-Lite's predictions on
held-out scenes to `--out/predictions.png`. Exits 1 if SepViT-Lite misses
the floor (mAP@0.5 >= 0.5, mIoU >= 0.6) in a full run.

`--export` then writes SepViT-Lite's trained Semantic FPN and RetinaNet as
float32 and int8 TFLite and ONNX (QDQ) files to `--out/files`, scores each
file on the held-out scenes in its runtime next to Keras, with its latency
(one image, one thread) and int8's ratio to float32
(`keras_sepvit.demos.edge`); a full run exits 1 if an int8 file scores more
than 0.01 below Keras.
"""

import argparse
import json
import os
import runpy
import sys
import time

# Run by path in main(), before keras_sepvit loads TensorFlow: TensorFlow without its
# start-up notices, errors kept (that file says why).
TF_LOGGING = os.path.join(os.path.dirname(__file__), os.pardir, "keras_sepvit", "tf_logging.py")

FLOOR = {"map50": 0.5, "miou": 0.6}
BACKBONES = ("sepvit_lite", "mit_b0")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/dense", help="output folder")
    p.add_argument(
        "--quick",
        action="store_true",
        help="a few steps on a few scenes (checks the pipeline; scores mean nothing)",
    )
    p.add_argument("--seed", type=int, default=0, help="scene and training seed")
    p.add_argument(
        "--export",
        action="store_true",
        help="also export SepViT-Lite's models (float32, int8; TFLite, ONNX) and score the files",
    )
    return p.parse_args(argv)


def _detection(quick, seed):
    from keras_sepvit.data.digit_scenes import make_digit_scenes
    from keras_sepvit.demos import detection as detection_demo

    scenes = detection_demo.SCENES  # 64x64, 1-3 digits of 16-24 px
    train = make_digit_scenes(64 if quick else 2400, **scenes, split="train", seed=seed)
    test = make_digit_scenes(16 if quick else 500, **scenes, split="test", seed=seed + 1)
    rows = []
    for name in BACKBONES:
        print(f"[detection] RetinaNet on {name} ...", flush=True)
        rows.append(
            detection_demo.train_and_evaluate_detector(
                name,
                train,
                test,
                epochs=2 if quick else 4,
                warmup_epochs=1,
                seed=seed,
                verbose=0,
            )
        )
        print(
            f"[detection] {name}: mAP@0.5 {rows[-1]['map50']:.3f}, mAP {rows[-1]['map']:.3f}, "
            f"{rows[-1]['seconds']:.0f} s",
            flush=True,
        )
    return rows, test, train


def _segmentation(quick, seed):
    from keras_sepvit.demos import segmentation as segmentation_demo

    # 64x64, 1-3 digits of 24-32 px (segmentation_demo.SCENES)
    data = segmentation_demo.make_data(
        num_train=64 if quick else 2000, num_test=16 if quick else 300, seed=seed
    )
    rows = []
    for name in BACKBONES:
        print(f"[segmentation] Semantic FPN on {name} ...", flush=True)
        steps = 10 if quick else 800
        rows.append(segmentation_demo.train_and_evaluate(name, data, steps=steps, seed=seed))
        print(
            f"[segmentation] {name}: mIoU {rows[-1]['miou']:.3f}, "
            f"{rows[-1]['train_seconds']:.0f} s",
            flush=True,
        )
    return rows, data


def format_table(detection, segmentation):
    lines = [
        "| backbone | params | RetinaNet mAP@0.5 | RetinaNet mAP | train (s) "
        "| Semantic FPN mIoU | train (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for det, seg in zip(detection, segmentation):
        lines.append(
            f"| {det['backbone']} | {det['backbone_params'] / 1e6:.2f}M | {det['map50']:.3f} "
            f"| {det['map']:.3f} | {det['seconds']:.0f} | {seg['miou']:.3f} "
            f"| {seg['train_seconds']:.0f} |"
        )
    return "\n".join(lines)


def draw(path, detector, segmenter, test_scenes, seg_data, count=4):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from keras_sepvit.demos.detection import draw_detections, predict_detections

    images = test_scenes["images"][:count]
    found = predict_detections(detector, images)
    seg_images, seg_masks = seg_data["test"]
    predicted = np.argmax(segmenter.predict(seg_images[:count], verbose=0), axis=-1)
    from keras_sepvit.preprocessing import IMAGENET_MEAN, IMAGENET_STD

    # The segmentation scenes are stored normalised: back to pixels for the picture.
    pixels = np.clip((seg_images[:count] * IMAGENET_STD + IMAGENET_MEAN) * 255, 0, 255)
    fig, axes = plt.subplots(4, count, figsize=(3 * count, 12))
    for i in range(count):
        draw_detections(
            axes[0, i], images[i], found["boxes"][i], found["labels"][i], found["confidence"][i]
        )
        axes[0, i].set_title("RetinaNet (SepViT-Lite)", fontsize=8)
        axes[1, i].imshow(pixels[i].astype("uint8"))
        axes[1, i].set_title("segmentation scene", fontsize=8)
        axes[2, i].imshow(seg_masks[i], vmin=0, vmax=10, cmap="tab20", interpolation="nearest")
        axes[2, i].set_title("true mask", fontsize=8)
        axes[3, i].imshow(predicted[i], vmin=0, vmax=10, cmap="tab20", interpolation="nearest")
        axes[3, i].set_title("Semantic FPN (SepViT-Lite)", fontsize=8)
        for ax in axes[1:, i]:
            ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    runpy.run_path(TF_LOGGING)["quiet_tensorflow"]()
    if args.export:  # before the training, not after it
        from keras_sepvit.demos.edge import missing_export_packages

        missing = missing_export_packages()
        if missing:
            raise SystemExit(
                f"error: --export needs {', '.join(missing)}: pip install -e '.[hub,export]'"
            )
    os.makedirs(args.out, exist_ok=True)
    start = time.perf_counter()
    detection, test_scenes, train_scenes = _detection(args.quick, args.seed)
    segmentation, seg_data = _segmentation(args.quick, args.seed)
    table = format_table(detection, segmentation)
    sepvit_det, mit_det = detection
    sepvit_seg, mit_seg = segmentation
    comparison = (
        f"SepViT-Lite vs MiT-B0, same data, heads and budget: mAP@0.5 "
        f"{sepvit_det['map50']:.3f} vs {mit_det['map50']:.3f}, mIoU "
        f"{sepvit_seg['miou']:.3f} vs {mit_seg['miou']:.3f}."
    )
    met = {
        "map50": sepvit_det["map50"] >= FLOOR["map50"],
        "miou": sepvit_seg["miou"] >= FLOOR["miou"],
    }
    print("\n" + table + "\n\n" + comparison)
    print(
        f"Floor (SepViT-Lite mAP@0.5 >= {FLOOR['map50']}, mIoU >= {FLOOR['miou']}): "
        + ("met" if all(met.values()) else f"NOT met {met}")
        + (" (--quick: scores mean nothing)" if args.quick else "")
    )
    picture = os.path.join(args.out, "predictions.png")
    draw(picture, sepvit_det["model"], sepvit_seg["model"], test_scenes, seg_data)
    report = {
        "quick": args.quick,
        "seconds": time.perf_counter() - start,
        "floor": FLOOR,
        "floor_met": met,
        "detection": [
            {k: r[k] for k in ("backbone", "map50", "map", "seconds", "backbone_params")}
            for r in detection
        ],
        "segmentation": [
            {k: r[k] for k in ("backbone", "miou", "train_seconds", "params", "steps")}
            for r in segmentation
        ],
    }
    markdown = f"{table}\n\n{comparison}\n\n![predictions](predictions.png)\n"
    if args.export:
        files = _export(
            args, sepvit_det["model"], sepvit_seg["model"], (train_scenes, test_scenes), seg_data
        )
        report["export"] = files
        met["int8"] = files["bar_met"]
        markdown += f"\n{files['table']}\n"
    with open(os.path.join(args.out, "report.json"), "w") as f:
        json.dump(report, f, indent=2)
    with open(os.path.join(args.out, "report.md"), "w") as f:
        f.write(markdown)
    print(f"Wrote {args.out}/report.md, report.json and predictions.png")
    return 0 if args.quick or all(met.values()) else 1


def _export(args, detector, segmenter, scenes, seg_data):
    """`--export`: SepViT-Lite's two models as float32 / int8 files, scored."""
    from keras_sepvit.demos import edge

    folder = os.path.join(args.out, "files")
    os.makedirs(folder, exist_ok=True)
    runs = 10 if args.quick else 50
    calibration = 16 if args.quick else edge.CALIBRATION_IMAGES
    rows = edge.score_segmenter(segmenter, seg_data, folder, runs, calibration)
    rows += edge.score_detector(detector, *scenes, folder, runs, calibration)
    from keras_sepvit.export.profiling import machine_description

    machine = machine_description(("ai-edge-litert", "onnxruntime", "tensorflow"))
    table, met = edge.format_table(rows), edge.bar_met(rows)
    print("\n" + table + "\n" + machine)
    print(
        f"int8 files within {edge.BAR} of Keras (mIoU, mAP@0.5): "
        + ("met" if met else "NOT met")
        + (" (--quick: scores mean nothing)" if args.quick else "")
    )
    return {
        "rows": edge.json_rows(rows),
        "table": table,
        "machine": machine,
        "bar": edge.BAR,
        "bar_met": met,
    }


if __name__ == "__main__":
    sys.exit(main())
