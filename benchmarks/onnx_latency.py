"""ONNX Runtime latency: SepViT vs the paper's transformer peers, same run.

    pip install torch==2.13.0 transformers     # the peers' definitions
    python benchmarks/onnx_latency.py [--size 224] [--runs 30] [--quick] [--without-amx]

SepViT-Lite vs PVTv2-b0 (the paper's Lite comparator, Table 8) and SepViT-T
vs Swin-T and PVTv2-b2. SepViT is exported with `keras_sepvit.export.to_onnx`
(tf2onnx, then `keras_sepvit.export.onnx_graph`'s rewrites) with a static batch of
1, as `torch.onnx.export` writes the peers: Hugging Face `transformers` image
classifiers built from their configs (1000 classes). All weights are random;
SepViT's get small noise on top of Keras' initialisers, so that its zero
biases and unit LayerNorm scales are not folded away by TensorFlow (a
trained model has none, and PyTorch's initialisers give the peers non-zero
biases). SepViT-Lite is also timed as a dynamic-batch file and as the int8
QDQ file (`to_onnx(..., quantization="int8")`, calibrated on random images:
its latency only; the export report measures its accuracy).

The exports run in child processes (TensorFlow and PyTorch do not share one
process safely); this process only runs ONNX Runtime: CPU, all graph
optimizations, batch 1, 1 and 2 intra-op threads. For each thread count the
timing loop interleaves the models (run i of every model, then run i + 1,
in rotating order) after warm-up, so that a slow spell of the machine
affects all of them alike; the figure is the median of --runs. Prints a
Markdown table with the ratio SepViT / peer and writes it and a PNG plot to
benchmarks/results/; its header names the CPU model and vector extensions
(`keras_sepvit.export.profiling.machine_description`: SepViT's ratios
differ by CPU), the date and the versions. Targets (issue 19), 1 thread:
SepViT-Lite <= 0.75x PVTv2-b0, SepViT-T <= 0.80x Swin-T, Lite int8 QDQ
<= 0.5x its float file.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

PAIRS = {  # SepViT variant -> its peers in the paper
    "SepViT-Lite": ("PVTv2-b0",),
    "SepViT-T": ("Swin-T", "PVTv2-b2"),
}
LITE_VARIANTS = ("SepViT-Lite dynamic batch", "SepViT-Lite int8")  # other files of Lite
# Versions in the header, read without importing TensorFlow or PyTorch here.
VERSIONS = ("onnxruntime", "keras", "tensorflow", "tf2onnx", "onnx", "torch", "transformers")


def _peer(name):
    """A transformers image classifier with the named published configuration."""
    import transformers as hf

    if name == "Swin-T":
        config = hf.SwinConfig(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24],
                               window_size=7, num_labels=1000)  # fmt: skip
        return hf.SwinForImageClassification(config)
    depths = {"PVTv2-b0": [2, 2, 2, 2], "PVTv2-b2": [3, 4, 6, 3]}[name]
    widths = {"PVTv2-b0": [32, 64, 160, 256], "PVTv2-b2": [64, 128, 320, 512]}[name]
    config = hf.PvtV2Config(
        depths=depths,
        hidden_sizes=widths,
        num_attention_heads=[1, 2, 5, 8],
        sr_ratios=[8, 4, 2, 1],
        mlp_ratios=[8, 8, 4, 4],
        num_labels=1000,
    )
    return hf.PvtV2ForImageClassification(config)


def _export_peer(name, size, path):
    import torch

    model = _peer(name).eval()
    x = torch.zeros(1, 3, size, size)
    with torch.no_grad():
        torch.onnx.export(model, (x,), path, input_names=["pixel_values"],
                          output_names=["logits"], opset_version=17, dynamo=False)  # fmt: skip
    return sum(p.numel() for p in model.parameters())


def _export_sepvit(name, size, path):
    import keras_sepvit
    from keras_sepvit.export import to_onnx

    base = name.split(" ")[0]
    build = {"SepViT-Lite": keras_sepvit.SepViTLite, "SepViT-T": keras_sepvit.SepViTTiny}[base]
    model = build(input_shape=(size, size, 3), classifier_activation=None)
    rng = np.random.default_rng(0)
    for w in model.weights:  # no exact zeros / ones for TensorFlow to fold (see above)
        w.assign(w.numpy() + rng.normal(scale=0.02, size=w.shape).astype("float32"))
    x = rng.uniform(0, 255, (1, size, size, 3)).astype("float32")
    kwargs = {"batch_size": None if name.endswith("dynamic batch") else 1}
    if name.endswith("int8"):
        calibration = rng.uniform(0, 255, (8, size, size, 3)).astype("float32")
        # random weights: top-1 agreement with Keras means nothing (near-ties)
        kwargs.update(quantization="int8", representative_data=calibration, min_agreement=0)
    to_onnx(model, path, sample_inputs=x, **kwargs)
    return model.count_params()


def _export_in_child(kind, names, size, folder):
    """Exports `names` (all SepViT, or all peers) in a child process; returns
    {name: parameters}. The files are folder/<name>.onnx."""
    out = os.path.join(folder, f"{kind}.json")
    command = [sys.executable, os.path.abspath(__file__), "--export", kind, "--folder", folder,
               "--size", str(size), "--names", *names]  # fmt: skip
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
    if result.returncode != 0 or not os.path.exists(out):
        raise RuntimeError(f"exporting {names} failed:\n{result.stderr[-3000:]}")
    with open(out) as f:
        return json.load(f)


def _child_export(kind, names, size, folder):
    export = _export_sepvit if kind == "sepvit" else _export_peer
    params = {name: export(name, size, os.path.join(folder, f"{name}.onnx")) for name in names}
    with open(os.path.join(folder, f"{kind}.json"), "w") as f:
        json.dump(params, f)


def _kind(name):
    return "sepvit" if name.startswith("SepViT") else "peer"


def _session(path, threads):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def interleaved_median_ms(runners, runs, warmup=5):
    """{name: median ms} of `runner(inputs)` for every (runner, inputs) in
    `runners` ({name: (runner, inputs)}), timed in interleaved rounds."""
    names = list(runners)
    for name in names:
        run, x = runners[name]
        for _ in range(warmup):
            run(x)
    times = {name: [] for name in names}
    for i in range(runs):
        for name in names[i % len(names) :] + names[: i % len(names)]:  # rotating order
            run, x = runners[name]
            start = time.perf_counter()
            run(x)
            times[name].append(time.perf_counter() - start)
    return {name: 1000.0 * float(np.median(t)) for name, t in times.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--runs", type=int, default=30, help="timed runs (median)")
    p.add_argument("--quick", action="store_true", help="tiny settings (test suite)")
    p.add_argument("--out", help="results folder (default benchmarks/results)")
    # Not amx.add_benchmark_flag: importing keras_sepvit imports TensorFlow,
    # which the PyTorch export child must not (the module docstring).
    p.add_argument("--without-amx", action="store_true",
                   help="deny this run AMX tiles (keras_sepvit.export.amx); results go to "
                   "an amx-denied/ folder unless --out is given")  # fmt: skip
    p.add_argument("--export", choices=["sepvit", "peers"], help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    p.add_argument("--names", nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.export:  # child process: export and exit
        return _child_export(args.export, args.names, args.size, args.folder)
    from keras_sepvit.export import amx

    # The export children inherit the denial (seccomp filters are inherited).
    out = amx.apply_benchmark_flag(args, os.path.join(os.path.dirname(__file__), "results"))
    pairs = PAIRS
    if args.quick:
        args.size, args.runs, pairs = 64, 2, {"SepViT-Lite": ("PVTv2-b0",)}
    import onnxruntime as ort

    from keras_sepvit.export.onnx_profiling import profile

    sepvits = [n for n in pairs] + list(LITE_VARIANTS)
    peers = [n for ps in pairs.values() for n in ps]
    nhwc = np.random.default_rng(1).uniform(0, 255, (1, args.size, args.size, 3))
    inputs = {  # SepViT takes raw NHWC pixels (its preprocessing is in the graph)
        "sepvit": nhwc.astype("float32"),
        "peer": np.ascontiguousarray(nhwc.transpose(0, 3, 1, 2) / 255.0, dtype="float32"),
    }
    results = {}  # (model, threads) -> ms
    with tempfile.TemporaryDirectory() as folder:
        params = _export_in_child("sepvit", sepvits, args.size, folder)
        params.update(_export_in_child("peers", peers, args.size, folder))
        for threads in (1, 2):
            runners = {
                name: (_session(os.path.join(folder, f"{name}.onnx"), threads), inputs[_kind(name)])
                for name in sepvits + peers
            }
            for name, ms in interleaved_median_ms(runners, args.runs).items():
                results[name, threads] = ms
        profiles = {  # 1 thread, after the timing (the profiler slows every kernel)
            name: profile(
                os.path.join(folder, f"{name}.onnx"),
                runs=2 if args.quick else 10,
                inputs=inputs[_kind(name)],
            )
            for name in sepvits + peers
        }
    from keras_sepvit.export.profiling import machine_description  # after the timing: Keras

    header = (
        f"ONNX Runtime {ort.__version__} (CPU) latency, batch 1, {args.size}x{args.size}, median "
        f"of {args.runs} interleaved runs; random weights; {machine_description(VERSIONS)}"
    )
    lines = [
        header,
        "",
        "| model | params (M) | threads | ms | SepViT / model |",
        "|---|---|---|---|---|",
    ]
    for sepvit, peer_names in pairs.items():
        for name in (sepvit,) + peer_names:
            for threads in (1, 2):
                ms = results[name, threads]
                ratio = "" if name == sepvit else f"{results[sepvit, threads] / ms:.2f}x"
                lines.append(
                    f"| {name} | {params[name] / 1e6:.1f} | {threads} | {ms:.2f} | {ratio} |"
                )
    lines += [
        "",
        "Other SepViT-Lite files (static batch 1 unless named):",
        "",
        "| file | threads | ms | / SepViT-Lite | / PVTv2-b0 |",
        "|---|---|---|---|---|",
    ]
    for name in LITE_VARIANTS:
        for threads in (1, 2):
            ms = results[name, threads]
            lines.append(
                f"| {name} | {threads} | {ms:.2f} | {ms / results['SepViT-Lite', threads]:.2f}x "
                f"| {ms / results['PVTv2-b0', threads]:.2f}x |"
            )
    lines += _profile_lines(profiles, pairs)
    table = "\n".join(lines)
    print(table)
    if not args.quick:
        _save(out, table, results, sepvits + peers)
    return {"latency_ms": results, "profiles": profiles}


def _profile_lines(profiles, pairs):
    """Where each file's 1-thread time goes (ORT's profiler), and how low each
    SepViT / peer ratio could go if SepViT's non-matrix kernels took no time."""
    from keras_sepvit.export.onnx_profiling import MATRIX_OPS, matrix_floor

    lines = [
        "",
        "Where the time goes, 1 thread (ONNX Runtime's profiler, median per kernel; "
        "matrix = Gemm, MatMul, Conv and their fused forms; GFLOP/s = 2 x MACs / their time):",
        "",
        "| model | kernels | ms (profiled) | matrix GMACs | matrix ms | matrix GFLOP/s "
        "| other ms | slowest other ops (ms) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, p in profiles.items():
        others = [(op, ms) for op, (_, ms) in p["by_op"].items() if op not in MATRIX_OPS][:3]
        lines.append(
            f"| {name} | {len(p['kernels'])} | {p['ms']:.2f} | {p['matrix_macs'] / 1e9:.3f} "
            f"| {p['matrix_ms']:.2f} | {p['gflops']:.0f} | {p['other_ms']:.2f} | "
            + ", ".join(f"{op} {ms:.2f}" for op, ms in others)
            + " |"
        )
    lines += ["", "| ratio | profiled | floor: SepViT's matrix ms / peer's ms |", "|---|---|---|"]
    for sepvit, peer_names in pairs.items():
        for peer in peer_names:
            model, other = profiles[sepvit], profiles[peer]
            lines.append(
                f"| {sepvit} / {peer} | {model['ms'] / other['ms']:.2f}x "
                f"| {matrix_floor(model, other):.2f}x |"
            )
    return lines


def _save(folder, table, results, names):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "onnx_latency.md"), "w") as f:
        f.write(table + "\n")
    fig, ax = plt.subplots(figsize=(10, 4))
    for i, threads in enumerate((1, 2)):
        ax.bar(np.arange(len(names)) + i * 0.4, [results[n, threads] for n in names], 0.4,
               label=f"{threads} thread{'s' * (threads > 1)}")  # fmt: skip
    ax.set_xticks(np.arange(len(names)) + 0.2)
    ax.set_xticklabels([n.replace(" ", "\n", 1) for n in names], fontsize=8)
    ax.set_ylabel("latency (ms, median)")
    ax.set_title("ONNX Runtime latency, batch 1")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(folder, "onnx_latency.png"), dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
