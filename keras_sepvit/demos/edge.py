"""The digit-scenes demos' trained models as edge files: float32 and int8, scored.

`score_segmenter` and `score_detector` export a trained Semantic FPN or
RetinaNet (`keras_sepvit.demos.segmentation` / `detection`) to float32 and
int8 TFLite and ONNX (int8 QDQ) files, run the held-out scenes through each
file in its runtime (LiteRT, ONNX Runtime), and score them as the demo
scores Keras: mIoU (`keras.metrics.MeanIoU`, 11 classes) for the segmenter,
COCO mAP@0.5 (pycocotools, boxes from `keras_sepvit.tasks.retinanet.
decode_detections`) for the detector. Each row also has the file's median
latency on one image, one thread, and the int8 file's ratio to the float32
file of its runtime. `dense_demo.py --export`, and `--export` of
`python -m keras_sepvit.demos.segmentation` / `detection`, print the table.

The bar (`BAR`): every int8 file within 1 point (0.01) of Keras.
"""

import os
import time

import numpy as np

# (runtime, quantization) of each file, float32 first: the int8 ratio needs it.
FILES = (("tflite", None), ("tflite", "int8"), ("onnx", None), ("onnx", "int8"))
BAR = 0.01  # most an int8 file's mIoU / mAP@0.5 may fall below Keras'
CALIBRATION_IMAGES = 200
# How the rows and files name a segmenter, by its class.
SEGMENTERS = {
    "SemanticFPNSegmenter": ("Semantic FPN", "semantic_fpn"),
    "DeepLabV3ImageSegmenter": ("DeepLabV3+", "deeplabv3plus"),
}


EXPORT_PACKAGES = ("tf2onnx", "onnx", "onnxruntime", "ai_edge_litert", "ai_edge_quantizer")


def missing_export_packages():
    """The packages of the `export` extra that do not import here (checked
    before a demo trains, so that `--export` does not fail after it)."""
    import importlib.util

    return [name for name in EXPORT_PACKAGES if importlib.util.find_spec(name) is None]


def export_files(model, out, prefix, calibration):
    """Writes the four `FILES` of `model` under `out`; {(runtime, quantization): path}.

    The int8 files calibrate on `calibration` (training images, as the model
    takes them) and are checked against Keras by the exporters
    (`keras_sepvit.export.dense_quantization.agreement_check`).
    """
    from keras_sepvit import export

    paths = {}
    for runtime, quantization in FILES:
        suffix = quantization or "float32"
        path = os.path.join(out, f"{prefix}_{suffix}.{runtime}")
        data = calibration if quantization else None
        if runtime == "tflite":
            export.to_tflite(model, path, quantization=quantization, representative_data=data)
        else:
            export.to_onnx(
                model, path, quantization=quantization, representative_data=data, batch_size=1
            )
        paths[(runtime, quantization)] = path
    return paths


def _runner(runtime, path, num_threads=None):
    from keras_sepvit import export

    cls = export.TFLiteRunner if runtime == "tflite" else export.ONNXRunner
    return cls(path, num_threads=num_threads)


def _latency_ms(runtime, path, image, runs):
    from keras_sepvit.export import median_latency_ms

    return median_latency_ms(_runner(runtime, path, num_threads=1), image[None], runs=runs)


def _rows(task, metric, keras_score, paths, scores, latencies):
    rows = [{"task": task, "file": "keras", "metric": metric, "score": keras_score}]
    for (runtime, quantization), path in paths.items():
        float_ms = latencies[(runtime, None)]
        ms = latencies[(runtime, quantization)]
        rows.append(
            {
                "task": task,
                "file": os.path.basename(path),
                "metric": metric,
                "score": scores[(runtime, quantization)],
                "vs_keras": scores[(runtime, quantization)] - keras_score,
                "ms": ms,
                "vs_float32": ms / float_ms,
                "int8": quantization == "int8",
                "bytes": os.path.getsize(path),
            }
        )
    return rows


def _miou(predict, images, masks, num_classes, batch_size=16):
    import keras

    from keras_sepvit.tasks.segmentation_losses import mean_iou

    metric = mean_iou(num_classes, ignore_class=None)
    for start in range(0, len(images), batch_size):
        logits = predict(images[start : start + batch_size])
        metric.update_state(masks[start : start + batch_size], logits)
    return float(keras.ops.convert_to_numpy(metric.result()))


def score_segmenter(model, data, out, runs=50, calibration_images=CALIBRATION_IMAGES):
    """Rows (dicts) for Keras and each file of a trained segmenter on `data["test"]`.

    `data` is `keras_sepvit.demos.segmentation.make_data`'s: normalised
    images; the int8 files calibrate on the first `calibration_images`
    training images.
    """
    images, masks = data["test"]
    cls = type(model).__name__
    task, prefix = SEGMENTERS.get(cls, (cls, cls.lower()))
    start = time.perf_counter()
    paths = export_files(model, out, prefix, data["train"][0][:calibration_images])
    print(f"[export] {task}: 4 files in {time.perf_counter() - start:.0f} s", flush=True)
    keras_score = _miou(model.predict_on_batch, images, masks, model.num_classes)
    scores, latencies = {}, {}
    for key, path in paths.items():
        scores[key] = _miou(_runner(key[0], path), images, masks, model.num_classes)
        latencies[key] = _latency_ms(key[0], path, images[0], runs)
    return _rows(task, "mIoU", keras_score, paths, scores, latencies)


def score_detector(model, train_scenes, test_scenes, out, runs=50, calibration_images=None):
    """Rows (dicts) for Keras and each file of a trained RetinaNet on `test_scenes`
    (COCO mAP@0.5; `make_digit_scenes` dicts, [0, 255] images normalised here
    as the demo does); the int8 files calibrate on training scenes."""
    from keras_sepvit.data.digit_scenes import NUM_CLASSES
    from keras_sepvit.preprocessing import normalize_images
    from keras_sepvit.tasks.coco_eval import evaluate_detections
    from keras_sepvit.tasks.retinanet import decode_detections, detect, detection_settings

    def _inputs(scenes):  # as the demo's detector takes them (`detection._inputs`)
        return normalize_images(np.asarray(scenes, "float32"))

    count = calibration_images or CALIBRATION_IMAGES
    images = _inputs(test_scenes["images"])
    start = time.perf_counter()
    paths = export_files(model, out, "retinanet", _inputs(train_scenes["images"][:count]))
    print(f"[export] RetinaNet: 4 files in {time.perf_counter() - start:.0f} s", flush=True)
    shape = images.shape[1:3]
    settings = detection_settings(model)

    def map50(found):
        return evaluate_detections(
            test_scenes["boxes"],
            test_scenes["labels"],
            found["boxes"],
            found["confidence"],
            found["labels"],
            [shape] * len(images),
            categories=range(NUM_CLASSES),
        )["map50"]

    keras_score = map50(detect(model, images, batch_size=32))
    scores, latencies = {}, {}
    for key, path in paths.items():
        raw = _runner(key[0], path)(images)
        found = decode_detections(raw["bbox_regression"], raw["cls_logits"], shape, **settings)
        scores[key] = map50(found)
        latencies[key] = _latency_ms(key[0], path, images[0], runs)
    return _rows("RetinaNet", "mAP@0.5", keras_score, paths, scores, latencies)


def bar_met(rows, bar=BAR):
    """Whether every int8 row scores at least its Keras row minus `bar`."""
    keras_scores = {r["task"]: r["score"] for r in rows if r["file"] == "keras"}
    return all(r["score"] >= keras_scores[r["task"]] - bar for r in rows if r.get("int8"))


def format_table(rows):
    """A Markdown table of the rows of `score_segmenter` / `score_detector`."""
    lines = [
        "| model | file | metric | score | vs Keras | ms (1 thread) | vs float32 | size |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["file"] == "keras":
            lines.append(f"| {r['task']} | Keras | {r['metric']} | {r['score']:.3f} | | | | |")
            continue
        lines.append(
            f"| {r['task']} | {r['file']} | {r['metric']} | {r['score']:.3f} "
            f"| {r['vs_keras']:+.3f} | {r['ms']:.2f} | {r['vs_float32']:.2f}x "
            f"| {r['bytes'] / 1e6:.1f} MB |"
        )
    return "\n".join(lines)


def json_rows(rows):
    """`rows` with plain floats (for report.json)."""
    return [
        {k: (float(v) if isinstance(v, np.floating) else v) for k, v in r.items()} for r in rows
    ]
