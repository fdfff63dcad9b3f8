"""Export a SepViT to every edge format and report how each compares with Keras.

    python export/export_model.py --model runs/digits/model.keras --out runs/digits/export
    python export/export_model.py --variant lite --out runs/lite_export   # a fresh model

Writes float32 / float16 / dynamic-range / int8 (attention internals float)
/ int8-full (full integer) / int16x8 TFLite files (builtin ops only), an
int8 file after quantization-aware fine-tuning
(int8-qat: `keras_sepvit.export.qat`, --qat-epochs on the digits training split)
and ONNX files (onnx: float32, onnx-int8: QDQ from ONNX Runtime's static
quantization; static batch 1; onnx-mobile: target="mobile" for NNAPI /
CoreML, and its .ort for ONNX Runtime Mobile), each loaded back and checked,
then prints and saves (report.md, report.json) a table: file size, max
|output difference| against Keras, top-1 agreement with Keras, held-out
accuracy (the digits test split for the digits model), batch-1 latency
(median over --runs after warm-up, 1 and 2 threads) in the runtime that
serves it, and the accelerators' checkers (NNAPI / CoreML MLProgram
partitions of the ONNX files, the TFLite GPU delegate's verdict).
Calibration images for int8/int16x8/onnx-int8 come from the training split through
the evaluation pipeline.
"""

import argparse
import os
import runpy
import sys
import zipfile

# Before keras_sepvit loads TensorFlow: without its start-up notices (that file says why).
_TF_LOGGING = os.path.join(os.path.dirname(__file__), os.pardir, "keras_sepvit", "tf_logging.py")
runpy.run_path(_TF_LOGGING)["quiet_tensorflow"]()

import numpy as np  # noqa: E402

from keras_sepvit.export import report  # noqa: E402

FORMATS = report.FORMATS


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help=".keras model; default: a fresh --variant")
    p.add_argument("--variant", default="lite", choices=["lite", "tiny", "small", "base"])
    p.add_argument("--image-size", type=int, default=None, help="input side of a fresh model")
    p.add_argument("--out", default="runs/export", help="output folder")
    p.add_argument("--formats", default=",".join(FORMATS), help=f"comma-separated, from {FORMATS}")
    p.add_argument(
        "--heldout",
        default="digits",
        choices=["digits", "none"],
        help="held-out set for accuracy/agreement (digits: the demo's test split)",
    )
    p.add_argument("--calibration", type=int, default=200, help="int8 calibration images")
    p.add_argument("--runs", type=int, default=30, help="timed runs per latency figure")
    p.add_argument("--qat-epochs", type=int, default=2, help="int8-qat fine-tuning epochs")
    p.add_argument("--qat-lr", type=float, default=2e-5, help="int8-qat peak learning rate")
    return p.parse_args(argv)  # fmt: skip


def heldout_data(args, image_size):
    """(test images, labels, calibration images) through the evaluation pipeline."""
    from keras_sepvit import data

    if args.heldout == "none":
        rng = np.random.default_rng(0)
        images = rng.uniform(0, 255, (max(args.calibration, 16), image_size, image_size, 3))
        return images[:16].astype("float32"), None, images.astype("float32")
    splits = data.digits_splits(0)
    names = [str(i) for i in range(10)]

    def arrays(name, limit=None):
        split = data.array_split(*splits[name], class_names=names)
        ds = data.make_dataset(split, False, 256, image_size=image_size, crop_fraction=1.0)
        xs, ys = zip(*[(x, y) for x, y in ds.as_numpy_iterator()])
        x, y = np.concatenate(xs), np.concatenate(ys).argmax(-1)
        return (x, y) if limit is None else (x[:limit], y[:limit])

    test_x, test_y = arrays("test")
    calibration, _ = arrays("train", args.calibration)
    return test_x, test_y, calibration


def main(argv=None):
    args = parse_args(argv)
    _check_paths(args)
    import keras
    import tensorflow as tf

    from keras_sepvit.model import VARIANTS

    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise ValueError(f"Unknown formats {unknown}; choose from {FORMATS}. "
                         f"Received: --formats {args.formats}")  # fmt: skip
    if args.model:
        model = _load_model(keras, args.model)
    else:
        size = args.image_size or 224
        model = VARIANTS[args.variant](input_shape=(size, size, 3), classes=10)
    _check_model(model, args)
    image_size = model.input_shape[1]
    os.makedirs(args.out, exist_ok=True)
    test_x, test_y, calibration = heldout_data(args, image_size)
    keras_out = np.asarray(model.predict(test_x, verbose=0))
    rows = []

    def row(name, path, outputs, run_with_threads, size_mb=None):
        rows.append(report.report_row(name, path, outputs, run_with_threads, keras_out, test_y,
                                      test_x[:1], args.runs, size_mb))  # fmt: skip
        print(f"  {name}: done", flush=True)

    # The Keras row is the reference: its size is the float32 parameters (a
    # saved compiled model also holds optimizer state); its latency is a traced
    # TF call with the process's default threads, not an edge runtime.
    traced = tf.function(lambda x: model(x, training=False))
    row("keras (TF, reference)", args.model, keras_out, lambda t: traced,
        size_mb=4 * model.count_params() / 1e6)  # fmt: skip
    failures = {}
    for fmt in formats:
        try:  # one format failing does not lose the others
            source = _qat_model(model, args, calibration) if fmt == "int8-qat" else model
            # A fresh model has random weights: its logits tie, so agreement means nothing.
            name, path, runner = report.export_format(
                fmt, source, args.out, test_x[:8], calibration,
                min_agreement=0.8 if args.model else 0.0, qat_epochs=args.qat_epochs,
            )  # fmt: skip
            row(name, path, runner(path, num_threads=2)(test_x),
                lambda t, p=path, r=runner: r(p, num_threads=t))  # fmt: skip
        except RuntimeError as err:
            failures[fmt] = str(err)
            print(f"  {fmt}: FAILED: {err}", flush=True)
    title = (
        f"Export of {args.model or 'a fresh ' + args.variant} ({image_size}x{image_size}); "
        f"held-out: {args.heldout} ({len(test_x)} images); latency: batch 1, median of "
        f"{args.runs}"
    )
    table = report.report_table(rows, failures, title)
    print(table)
    print(f"wrote {report.write_report(args.out, table, rows, failures)}")
    return rows


def _check_paths(args):
    """A user's path mistake ends the run with one line (exit 1), before any work."""
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise SystemExit(
            f"error: --out {args.out} is a file; the export writes a folder of files "
            "(model_*.tflite, model*.onnx, report.md): give a folder path, new or existing"
        )
    if args.model and not os.path.isfile(args.model):
        raise SystemExit(f"error: --model {args.model} not found: give a saved .keras model file")


def _load_model(keras, path):
    """The .keras model at `path`; an unreadable file ends the run with one line (exit 1)."""
    if path.endswith(".keras") and not zipfile.is_zipfile(path):
        raise SystemExit(
            f"error: --model {path} is not a .keras file (a .keras model is a zip archive; "
            "this one is damaged or another format): give a file saved with model.save(...)"
        )
    try:
        return keras.saving.load_model(path)
    except (ValueError, TypeError, KeyError, OSError, EOFError, zipfile.BadZipFile) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise SystemExit(
            f"error: --model {path} is not a readable Keras model ({reason}); give a .keras "
            "file saved with model.save(...), e.g. runs/digits/model.keras"
        ) from None


def _check_model(model, args):
    """Refuses, before any work, what would give a meaningless report."""
    shape = tuple(model.input_shape[1:])
    if len(shape) != 3 or shape[0] is None or shape[1] is None or shape[0] != shape[1]:
        raise ValueError(
            "Export needs a static, square input size (the edge runtimes plan memory for "
            f"it). Received: input_shape={model.input_shape} for {args.model}; rebuild the "
            "model with e.g. input_shape=(224, 224, 3) and copy its weights."
        )
    if args.calibration < 1:
        raise ValueError(f"--calibration must be >= 1. Received: {args.calibration}")
    if args.heldout == "digits" and model.output_shape[-1] != 10:
        raise ValueError(
            f"The model gives {model.output_shape[-1]} outputs per image, but the digits "
            "held-out set has 10 classes: its accuracy and agreement would mean nothing. "
            "Use --heldout none for a model trained on other classes. "
            f"Received: output_shape={model.output_shape}"
        )


def _qat_model(model, args, calibration):
    """Quantization-aware fine-tuning on the digits training split (keras_sepvit.export.qat)."""
    import time

    import keras

    from keras_sepvit import data, training
    from keras_sepvit.export import qat
    from keras_sepvit.optimizer_build import build_optimizer

    if args.heldout != "digits":
        raise RuntimeError("int8-qat fine-tunes on the digits training split: use --heldout digits")
    if args.qat_epochs < 1:
        raise RuntimeError(f"int8-qat needs --qat-epochs >= 1. Received: {args.qat_epochs}")
    names = [str(i) for i in range(10)]
    train = data.array_split(*data.digits_splits(0)["train"], class_names=names)
    pipeline = dict(image_size=model.input_shape[1], randaugment=False, random_erasing=0.0,
                    mixup_alpha=0.0, cutmix_alpha=0.0, crop_scale=(0.6, 1.0),
                    crop_fraction=1.0, flip=False, seed=0)  # fmt: skip  # the demo's
    train_ds = data.make_dataset(train, True, 64, **pipeline)
    steps = data.steps_per_epoch(train.num_examples, 64)
    qat_model = qat.quantize_model(model, calibration)
    optimizer = training.make_optimizer(
        qat_model, args.qat_lr, steps * args.qat_epochs, 0, min_learning_rate=0.0
    )
    probabilities = model.layers[-1].get_config().get("activation") == "softmax"
    loss = keras.losses.CategoricalCrossentropy(from_logits=not probabilities)
    qat_model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])
    build_optimizer(qat_model)  # one trace of the train step, not two
    start = time.perf_counter()
    qat_model.fit(  # shuffle=False: the tf.data pipeline shuffles (Keras ignores it, warning)
        train_ds, epochs=args.qat_epochs, steps_per_epoch=steps, shuffle=False, verbose=2
    )
    print(f"  int8-qat: {args.qat_epochs} epochs in {time.perf_counter() - start:.0f} s")
    return qat_model


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
