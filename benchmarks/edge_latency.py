"""Edge latency: SepViT-Lite's TFLite modes vs MobileNetV2 and EfficientNetB0, same run.

    python benchmarks/edge_latency.py [--size 224] [--runs 50] [--order back-to-back] [--quick]
    python benchmarks/edge_latency.py --threads 1 --without-amx   # as a CPU without AMX would

Every file is written by `keras_sepvit.export.to_tflite` (static batch 1):
SepViT-Lite as float32, dynamic, int8 (the XNNPACK recipe) and int8-full;
the peers as float32 and int8-full (full-integer int8, the usual way a
convolutional network is shipped), calibrated on the same images. All files
are loaded in the LiteRT interpreter (XNNPACK) and timed INTERLEAVED: each
of --runs rounds invokes every file once, so that a slow patch of the
machine hits all of them alike; the figure is the median.

Every file is converted first, then all are loaded and timed: until
2026-12-07 each file was loaded right after its conversion, between the
next ones, and SepViT-Lite's int8 file then ran 7% slower than the same
file loaded after all conversions or in a fresh process that does nothing
else (6.09 against 5.71 and 5.65 ms; its float32 file and the peers'
within 2%), a state of the converting process that a phone app does not
have (docs/benchmarks.md).

What is timed is the interpreter's invoke alone: each file's input is set
once beforehand, in the file's own input type. (Until 2026-12-06 the
Python-side conversion of the image was timed too; for the int8-input peers
that is a numpy quantization of 150,528 values, 0.5-1 ms, which flattered
SepViT's ratios.) `--order back-to-back` times each file's rounds one after
the other instead (warm caches: a model run frame after frame with nothing
between); it prints its table without writing the results.

Prints a Markdown table with the XNNPACK delegation of each file, the ratios
the edge issue holds SepViT to (int8 / its own float32, int8 / MobileNetV2
int8), what int8 buys each peer (its int8-full / float32 file: about 1x on
a CPU without int8 dot-product instructions, where no int8 file is faster)
and writes it with a PNG plot to benchmarks/results/; the header names
the CPU model and its vector extensions, the date and the versions. Weights
are random: latency does not depend on them, but calibration does, so
SepViT's zero-initialised window tokens and biases are perturbed.
"""

import argparse
import os
import tempfile
import time

import numpy as np

from keras_sepvit.export import amx

SEPVIT_MODES = ("float32", "dynamic", "int8", "int8-full")
PEER_MODES = ("float32", "int8-full")


def _models(size, peers):
    import keras

    import keras_sepvit

    shape = (size, size, 3)
    sepvit = keras_sepvit.SepViTLite(input_shape=shape)
    rng = np.random.default_rng(0)
    for w in sepvit.weights:
        w.assign(w.numpy() + rng.normal(scale=0.02, size=w.shape).astype("float32"))
    models = {"SepViT-Lite": sepvit}
    if "MobileNetV2" in peers:
        models["MobileNetV2"] = keras.applications.MobileNetV2(weights=None, input_shape=shape)
    if "EfficientNetB0" in peers:
        models["EfficientNetB0"] = keras.applications.EfficientNetB0(
            weights=None, input_shape=shape
        )
    return models


def time_interleaved(runners, runs, warmup=5):
    """Median ms per runner (a no-argument callable); each round calls every
    runner once, in turn."""
    for run in runners.values():
        for _ in range(warmup):
            run()
    times = {key: [] for key in runners}
    for _ in range(runs):
        for key, run in runners.items():
            start = time.perf_counter()
            run()
            times[key].append(time.perf_counter() - start)
    return {key: 1000.0 * float(np.median(t)) for key, t in times.items()}


def time_back_to_back(runners, runs, warmup=5):
    """Median ms per runner (a no-argument callable); each runner's rounds
    run one after the other (its caches stay warm)."""
    return {key: time_interleaved({key: run}, runs, warmup)[key] for key, run in runners.items()}


ORDERS = {"interleaved": time_interleaved, "back-to-back": time_back_to_back}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--runs", type=int, default=50, help="timed rounds (median)")
    p.add_argument("--order", choices=sorted(ORDERS), default="interleaved",
                   help="interleaved (published) or back-to-back (warm caches)")  # fmt: skip
    p.add_argument("--calibration", type=int, default=32, help="int8 calibration images")
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    p.add_argument("--peers", default="MobileNetV2,EfficientNetB0")
    p.add_argument("--quick", action="store_true", help="tiny settings (test suite)")
    p.add_argument("--out", help="results folder (default benchmarks/results)")
    amx.add_benchmark_flag(p)
    args = p.parse_args(argv)
    out = amx.apply_benchmark_flag(args, os.path.join(os.path.dirname(__file__), "results"))
    if args.quick:
        args.size, args.runs, args.calibration, args.peers = 64, 2, 2, "MobileNetV2"
    threads = [int(t) for t in args.threads.split(",")]

    from keras_sepvit.export import TFLiteRunner, to_tflite
    from keras_sepvit.export.profiling import machine_description, xnnpack_delegation

    rng = np.random.default_rng(1)
    images = rng.uniform(0, 255, (args.calibration, args.size, args.size, 3)).astype("float32")
    runners, delegation, paths = {}, {}, {}
    with tempfile.TemporaryDirectory() as folder:
        for name, model in _models(args.size, args.peers.split(",")).items():
            for mode in SEPVIT_MODES if name == "SepViT-Lite" else PEER_MODES:
                paths[name, mode] = to_tflite(
                    model,
                    os.path.join(folder, f"{name}_{mode}.tflite"),
                    quantization=mode,
                    representative_data=images,
                    sample_inputs=images[:1],
                    min_agreement=0,  # random weights: top-1 agreement means nothing
                )
                delegation[name, mode] = xnnpack_delegation(paths[name, mode])
        # Loaded after every conversion (module docstring: loaded between
        # them, the int8 file ran 7% slower than in a fresh process).
        for (name, mode), path in paths.items():
            for t in threads:
                runner = TFLiteRunner(path, num_threads=t)
                runner(images[:1])  # sets the input, in the file's type, once
                runners[name, mode, t] = runner.interpreter.invoke
        results = ORDERS[args.order](runners, args.runs)
    header = (
        f"TFLite (LiteRT {_litert_version()}, XNNPACK) latency, batch 1, {args.size}x{args.size}, "
        f"median of {args.runs} {args.order} rounds; "
        f"{machine_description(('ai-edge-litert', 'keras', 'tensorflow'))}"
    )
    lines = [header, "", "| model | mode | XNNPACK nodes (taken/total, partitions) | "
             + " | ".join(f"{t} thread ms" for t in threads) + " |"]  # fmt: skip
    lines.append("|---|---|---|" + "---|" * len(threads))
    for (name, mode), (taken, total, parts) in delegation.items():
        cells = " | ".join(f"{results[name, mode, t]:.2f}" for t in threads)
        lines.append(f"| {name} | {mode} | {taken}/{total}, {parts} | {cells} |")
    lines += ["", "| ratio | " + " | ".join(f"{t} thread" for t in threads) + " |"]
    lines.append("|---|" + "---|" * len(threads))
    peers = [n for n, m in delegation if n != "SepViT-Lite" and m == "float32"]
    pairs = [  # (numerator, denominator) files
        (("SepViT-Lite", mode), other)
        for mode in ("int8", "dynamic")
        for other in [("SepViT-Lite", "float32")] + [(n, "int8-full") for n in peers]
    ]
    # What int8 buys the peers on this CPU: without int8 dot-product
    # instructions (x86 AVX2 without VNNI) int8 is no faster than float32.
    pairs += [((n, "int8-full"), (n, "float32")) for n in peers]
    ratios = {}
    for (name, mode), (other, other_mode) in pairs:
        key = f"{name} {mode} / {other} {other_mode}"
        ratios[key] = {t: results[name, mode, t] / results[other, other_mode, t] for t in threads}
        lines.append(f"| {key} | " + " | ".join(f"{r:.2f}x" for r in ratios[key].values()) + " |")
    table = "\n".join(lines)
    print(table)
    if not args.quick and args.order == "interleaved":
        _save(out, table, results, threads)
    return {"latency_ms": results, "delegation": delegation, "ratios": ratios}


def _litert_version():
    from importlib.metadata import version

    return version("ai-edge-litert")


def _save(folder, table, results, threads):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "edge_latency.md"), "w") as f:
        f.write(table + "\n")
    keys = sorted({(n, m) for n, m, _ in results}, key=lambda k: (k[0] != "SepViT-Lite", k))
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(threads)
    for i, t in enumerate(threads):
        ax.bar(np.arange(len(keys)) + i * width, [results[n, m, t] for n, m in keys], width,
               label=f"{t} thread{'s' if t > 1 else ''}")  # fmt: skip
    ax.set_xticks(np.arange(len(keys)) + width * (len(threads) - 1) / 2)
    ax.set_xticklabels([f"{n}\n{m}" for n, m in keys], fontsize=7)
    ax.set_ylabel("latency (ms, median)")
    ax.set_title("TFLite (XNNPACK) latency, batch 1")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(folder, "edge_latency.png"), dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
