"""Dense-prediction demo: SepViT-Lite vs. MiT-B0 on digit scenes, four of the paper's heads.

Digit scenes (`keras_sepvit.data.digit_scenes`: real handwritten digits from
scikit-learn, no download, pasted on noisy canvases with boxes, class masks
and instance masks; held-out scenes use scans no training scene uses) train,
from random initialisation and with the same budget per task:
  - RetinaNet (keras-hub's `RetinaNetObjectDetector`, FPN P3-P7) and Mask
    R-CNN (`keras_sepvit.tasks.mask_rcnn`, each digit an instance) on the
    authors' dense SepViT-Lite and on keras-hub's MiT-B0 (SegFormer's
    encoder), scored with COCO box and mask mAP through pycocotools;
  - Semantic FPN and UperNet (`keras_sepvit.tasks.semantic_fpn`, `.upernet`)
    on the same two backbones, scored with `keras.metrics.MeanIoU`
    (background + 10 digits).

    python examples/dense_demo.py [--out runs/dense] [--quick] [--export]

Prints and writes a table (one line per head and metric, one column per
backbone, training times) to `--out/report.md` and `report.json`, and draws
SepViT-Lite's predictions on held-out scenes to `--out/predictions.png`.
Exits 1 if SepViT-Lite misses a floor in a full run
(`keras_sepvit.demos.dense_report.FLOOR`: RetinaNet mAP@0.5 >= 0.5, Mask
R-CNN mask mAP@0.5 >= 0.5, Semantic FPN mIoU >= 0.6, UperNet mIoU at least
Semantic FPN's - 0.02).

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


def _report(task, head, name, row, keys):
    scores = ", ".join(f"{k} {row[k]:.3f}" for k in keys)
    seconds = row.get("seconds", row.get("train_seconds"))
    print(f"[{task}] {head} on {name}: {scores}, {seconds:.0f} s", flush=True)


def _detection(quick, seed):
    """RetinaNet and Mask R-CNN on each backbone, the same scenes and budget."""
    from keras_sepvit.data.digit_scenes import make_digit_scenes
    from keras_sepvit.demos import detection as detection_demo
    from keras_sepvit.demos import instances

    scenes = detection_demo.SCENES  # 64x64, 1-3 digits of 16-24 px
    train = make_digit_scenes(64 if quick else 2400, **scenes, split="train", seed=seed)
    test = make_digit_scenes(16 if quick else 500, **scenes, split="test", seed=seed + 1)
    budget = dict(epochs=2 if quick else 4, warmup_epochs=1, seed=seed, verbose=0)
    results = {"retinanet": [], "mask_rcnn": []}
    for name in BACKBONES:
        print(f"[detection] RetinaNet on {name} ...", flush=True)
        row = detection_demo.train_and_evaluate_detector(name, train, test, **budget)
        results["retinanet"].append(row)
        _report("detection", "RetinaNet", name, row, ("map50", "map"))
    # Mask R-CNN: half RetinaNet's passes (its step costs about twice as much);
    # 2 x 150 steps reach mask mAP@0.5 0.87 on 1,200 scenes x 4 (2026-12-06).
    budget = {**budget, "epochs": 1 if quick else 2, "warmup_epochs": 0.5}
    for name in BACKBONES:
        print(f"[instances] Mask R-CNN on {name} ...", flush=True)
        row = instances.train_and_evaluate(name, train, test, **budget)
        results["mask_rcnn"].append(row)
        _report("instances", "Mask R-CNN", name, row, ("box_map50", "mask_map50", "mask_map"))
    return results, test, train


def _segmentation(quick, seed):
    """Semantic FPN and UperNet on each backbone, the same scenes and steps."""
    from keras_sepvit.demos import segmentation as segmentation_demo

    # 64x64, 1-3 digits of 24-32 px (segmentation_demo.SCENES)
    data = segmentation_demo.make_data(
        num_train=64 if quick else 2000, num_test=16 if quick else 300, seed=seed
    )
    results = {"semantic_fpn": [], "upernet": []}
    for head, title in (("semantic_fpn", "Semantic FPN"), ("upernet", "UperNet")):
        for name in BACKBONES:
            print(f"[segmentation] {title} on {name} ...", flush=True)
            row = segmentation_demo.train_and_evaluate(
                name, data, steps=10 if quick else 800, seed=seed, head=head
            )
            results[head].append(row)
            _report("segmentation", title, name, row, ("miou",))
    return results, data


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
    from keras_sepvit.demos import dense_report

    os.makedirs(args.out, exist_ok=True)
    start = time.perf_counter()
    detection, test_scenes, train_scenes = _detection(args.quick, args.seed)
    segmentation, seg_data = _segmentation(args.quick, args.seed)
    results = {**detection, **segmentation}
    table = dense_report.format_table(results)
    comparison = dense_report.comparison(results)
    met = dense_report.floors_met(results)
    print("\n" + table + "\n\n" + comparison)
    print(
        f"Floor ({dense_report.floor_text()}): "
        + ("met" if all(met.values()) else f"NOT met {met}")
        + (" (--quick: scores mean nothing)" if args.quick else "")
    )
    models = {head: rows[0]["model"] for head, rows in results.items()}
    dense_report.draw(os.path.join(args.out, "predictions.png"), models, test_scenes, seg_data)
    report = {
        "quick": args.quick,
        "seconds": time.perf_counter() - start,
        "floor": dense_report.FLOOR,
        "floor_met": met,
        **dense_report.json_rows(results),
    }
    markdown = f"{table}\n\n{comparison}\n\n![predictions](predictions.png)\n"
    if args.export:
        files = _export(
            args, models["retinanet"], models["semantic_fpn"], (train_scenes, test_scenes), seg_data
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
