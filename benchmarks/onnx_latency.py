"""ONNX Runtime latency: SepViT vs the paper's transformer peers, same run.

    pip install torch==2.13.0 transformers     # the peers' definitions
    python benchmarks/onnx_latency.py [--size 224] [--runs 30] [--quick]

SepViT-Lite vs PVTv2-b0 (the paper's Lite comparator, Table 8) and SepViT-T
vs Swin-T and PVTv2-b2. SepViT is exported with `keras_sepvit.export.to_onnx`
(tf2onnx); the peers are Hugging Face `transformers` image classifiers built
from their configs (random weights, 1000 classes) and exported with
`torch.onnx.export`. Every file runs in ONNX Runtime (CPU, all graph
optimizations), batch 1, 1 and 2 intra-op threads, median over --runs after
warm-up. Prints a Markdown table with the ratio SepViT / peer and writes it
and a PNG plot to benchmarks/results/. Targets: SepViT-Lite <= 0.8x
PVTv2-b0, SepViT-T <= 1.0x Swin-T.
"""

import argparse
import os
import platform
import tempfile

import numpy as np

PAIRS = {  # SepViT variant -> its peers in the paper
    "SepViT-Lite": ("PVTv2-b0",),
    "SepViT-T": ("Swin-T", "PVTv2-b2"),
}


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
    params = sum(p.numel() for p in model.parameters())
    return path, params


def _export_sepvit(name, size, path):
    import keras_sepvit
    from keras_sepvit.export import to_onnx

    build = {"SepViT-Lite": keras_sepvit.SepViTLite, "SepViT-T": keras_sepvit.SepViTTiny}[name]
    model = build(input_shape=(size, size, 3), classifier_activation=None)
    x = np.random.default_rng(0).uniform(0, 255, (1, size, size, 3)).astype("float32")
    return to_onnx(model, path, sample_inputs=x), model.count_params()


def _session(path, threads):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--runs", type=int, default=30, help="timed runs (median)")
    p.add_argument("--quick", action="store_true", help="tiny settings (test suite)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = p.parse_args(argv)
    pairs = PAIRS
    if args.quick:
        args.size, args.runs, pairs = 64, 2, {"SepViT-Lite": ("PVTv2-b0",)}
    import onnxruntime as ort
    import torch
    import transformers

    from keras_sepvit.export import median_latency_ms

    nhwc = np.random.default_rng(1).uniform(0, 255, (1, args.size, args.size, 3))
    inputs = {  # SepViT takes raw NHWC pixels (its preprocessing is in the graph)
        "sepvit": nhwc.astype("float32"),
        "peer": np.ascontiguousarray(nhwc.transpose(0, 3, 1, 2) / 255.0, dtype="float32"),
    }
    results, params = {}, {}  # (model, threads) -> ms; model -> parameters
    with tempfile.TemporaryDirectory() as folder:
        for sepvit, peers in pairs.items():
            for name in (sepvit,) + peers:
                path = os.path.join(folder, f"{name}.onnx")
                is_sepvit = name.startswith("SepViT")
                export = _export_sepvit if is_sepvit else _export_peer
                path, params[name] = export(name, args.size, path)
                x = inputs["sepvit" if is_sepvit else "peer"]
                for threads in (1, 2):
                    results[name, threads] = median_latency_ms(
                        _session(path, threads), x, args.runs
                    )
    import keras

    header = (
        f"ONNX Runtime {ort.__version__} (CPU) latency, batch 1, {args.size}x{args.size}, median "
        f"of {args.runs}; {platform.machine()}, {os.cpu_count()} cores; keras {keras.__version__}"
        f", torch {torch.__version__}, transformers {transformers.__version__}; random weights"
    )
    lines = [
        header,
        "",
        "| model | params (M) | threads | ms | SepViT / model |",
        "|---|---|---|---|---|",
    ]
    for sepvit, peers in pairs.items():
        for name in (sepvit,) + peers:
            for threads in (1, 2):
                ms = results[name, threads]
                ratio = "" if name == sepvit else f"{results[sepvit, threads] / ms:.2f}x"
                lines.append(
                    f"| {name} | {params[name] / 1e6:.1f} | {threads} | {ms:.2f} | {ratio} |"
                )
    table = "\n".join(lines)
    print(table)
    if not args.quick:
        _save(args.out, table, results, pairs)
    return results


def _save(folder, table, results, pairs):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "onnx_latency.md"), "w") as f:
        f.write(table + "\n")
    names = [n for sepvit, peers in pairs.items() for n in (sepvit,) + peers]
    fig, ax = plt.subplots(figsize=(8, 4))
    for i, threads in enumerate((1, 2)):
        ax.bar(np.arange(len(names)) + i * 0.4, [results[n, threads] for n in names], 0.4,
               label=f"{threads} thread{'s' * (threads > 1)}")  # fmt: skip
    ax.set_xticks(np.arange(len(names)) + 0.2)
    ax.set_xticklabels(names)
    ax.set_ylabel("latency (ms, median)")
    ax.set_title("ONNX Runtime latency, batch 1")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(folder, "onnx_latency.png"), dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
