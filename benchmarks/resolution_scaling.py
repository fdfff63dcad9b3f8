"""Cost against resolution: SepViT-T's backbone vs a global-attention ViT of the same width.

    python benchmarks/resolution_scaling.py [--sizes 224,448,896] [--runs 5] [--quick]

The peer is `keras_sepvit.SepViT(**MODEL_CONFIGS["tiny"], attention="global")`:
the same stages, widths, depths, MLPs and position encodings, with every
block attending over its whole map (the quadratic baseline of the paper's
complexity analysis, section 3.4). Both run without the classifier head
(`include_top=False`), batch 1, TensorFlow backend (traced `tf.function`),
each (model, size) in a fresh child process that reports the median forward
time over --runs and the peak resident memory of the forward pass above the
built model. A peer whose attention matrices alone would exceed --memory-limit
GiB is not run and is reported as such. Prints a Markdown table with the
ratio SepViT-T / global ViT and growth against 224, and writes it with a PNG
plot to benchmarks/results/.
"""

import argparse
import json
import os
import subprocess
import sys

import numpy as np

MODELS = ("SepViT-T", "global ViT (same width)")

_CHILD = r"""
import json, resource, sys
import numpy as np
import tensorflow as tf
import keras_sepvit
from keras_sepvit.export import median_latency_ms
name, size, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
attention = None if name == "SepViT-T" else "global"
model = keras_sepvit.SepViT(**keras_sepvit.MODEL_CONFIGS["tiny"], include_top=False,
                            input_shape=(size, size, 3), attention=attention)
forward = tf.function(lambda x: model(x, training=False))
x = tf.constant(np.random.default_rng(0).uniform(0, 255, (1, size, size, 3)), tf.float32)
forward.get_concrete_function(x)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
ms = median_latency_ms(lambda x: forward(x).numpy(), x, runs, warmup=1)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print("RESULT " + json.dumps({"ms": ms, "peak_mib": (after - before) / 1024}))
"""


def attention_gib(size, global_attention):
    """Bytes of the largest attention-score tensor (float32, batch 1) in GiB."""
    from keras_sepvit import MODEL_CONFIGS

    config = MODEL_CONFIGS["tiny"]
    largest = 0
    for stage, stride in enumerate((4, 8, 16, 32)):
        tokens = (size // stride) ** 2
        heads = config["num_heads"][stage]
        window = max(config["window_sizes"][stage]) ** 2
        keys = tokens if global_attention else min(tokens, window)
        queries = tokens
        largest = max(largest, heads * queries * keys * 4)
    return largest / 2**30


def _measure(name, size, runs):
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c", _CHILD, name, str(size), str(runs)],
                          capture_output=True, text=True, env=env)  # fmt: skip
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"error": f"exit {proc.returncode}: {' | '.join(tail)}"}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="224,448,896")
    p.add_argument("--runs", type=int, default=5, help="timed runs (median)")
    p.add_argument("--memory-limit", type=float, default=6.0, help="GiB of attention scores")
    p.add_argument("--quick", action="store_true", help="tiny settings (test suite)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.quick:
        sizes, args.runs = [64, 128], 1
    results = {}
    for size in sizes:
        for name in MODELS:
            need = attention_gib(size, name != "SepViT-T")
            if need > args.memory_limit:
                results[name, size] = {"skipped": f"attention scores need {need:.0f} GiB"}
            else:
                results[name, size] = _measure(name, size, args.runs)
            print(f"  {name} @ {size}: {results[name, size]}", flush=True)
    from keras_sepvit.export.profiling import machine_description

    header = (
        f"SepViT-T backbone vs a global-attention ViT of the same width, batch 1, TF backend "
        f"(tf.function), median of {args.runs}; peak memory = resident memory added by the "
        f"forward pass; {machine_description(('keras', 'tensorflow'))}"
    )
    lines = [header, "", "| size | model | ms | x vs 224 | peak MiB | SepViT-T / global (time) |"]
    lines.append("|---|---|---|---|---|---|")
    base = {name: results[name, sizes[0]].get("ms") for name in MODELS}
    for size in sizes:
        for name in MODELS:
            r = results[name, size]
            if "ms" not in r:
                lines.append(f"| {size} | {name} | {r.get('skipped') or r.get('error')} | | | |")
                continue
            growth = f"{r['ms'] / base[name]:.1f}x" if base[name] else ""
            ratio = ""
            other = results["global ViT (same width)", size]
            if name == "SepViT-T" and "ms" in other:
                ratio = f"{r['ms'] / other['ms']:.2f}x"
            lines.append(
                f"| {size} | {name} | {r['ms']:.1f} | {growth} | {r['peak_mib']:.0f} | {ratio} |"
            )
    table = "\n".join(lines)
    print(table)
    if not args.quick:
        _save(args.out, table, results, sizes)
    return results


def _save(folder, table, results, sizes):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "resolution_scaling.md"), "w") as f:
        f.write(table + "\n")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name in MODELS:
        points = [(s, results[name, s]) for s in sizes if "ms" in results[name, s]]
        xs = [s for s, _ in points]
        axes[0].plot(xs, [r["ms"] for _, r in points], "o-", label=name)
        axes[1].plot(xs, [r["peak_mib"] for _, r in points], "o-", label=name)
    pixels = np.array(sizes, float)
    for ax, what in zip(axes, ("latency (ms, median)", "peak memory of the forward (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.set_xlabel("input side (pixels)")
        ax.set_ylabel(what)
        ax.legend()
    first = results["SepViT-T", sizes[0]].get("ms")
    if first:
        axes[0].plot(pixels, first * (pixels / pixels[0]) ** 2, "k:", label="linear in pixels")
        axes[0].legend()
    fig.suptitle("Cost against resolution, batch 1")
    fig.tight_layout()
    fig.savefig(os.path.join(folder, "resolution_scaling.png"), dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
