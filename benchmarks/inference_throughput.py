"""Keras inference throughput: SepViT-T vs keras.applications.ConvNeXtTiny, same run.

    python benchmarks/inference_throughput.py [--batch-size 32] [--runs 5] [--quick]

Both are the same FLOPs class (SepViT-T 4.5 GMACs, ConvNeXt-T 4.5 GMACs at
224). TensorFlow backend, random weights and [0, 255] images, a traced
`tf.function` of `model(x, training=False)` with XLA off and on (on CPU XLA
helps some graphs and hurts others, so both are shown), median over --runs
after warm-up. Prints images/s and the ratio SepViT-T / ConvNeXt-T
(throughput: above 1 means SepViT-T is faster) and writes the table and a
PNG plot to benchmarks/results/.
"""

import argparse
import os

import numpy as np


def _models(size):
    import keras

    import keras_sepvit

    shape = (size, size, 3)
    return {
        "SepViT-T": lambda: keras_sepvit.SepViTTiny(input_shape=shape),
        "ConvNeXtTiny": lambda: keras.applications.ConvNeXtTiny(weights=None, input_shape=shape),
    }


def images_per_second(model, batch_size, runs, size, jit_compile):
    import tensorflow as tf

    from keras_sepvit.export import median_latency_ms

    forward = tf.function(lambda x: model(x, training=False), jit_compile=jit_compile)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(0, 255, (batch_size, size, size, 3)), tf.float32)
    # 2 warm-up calls trace/compile; .numpy() waits for the result.
    ms = median_latency_ms(lambda x: forward(x).numpy(), x, runs, warmup=2)
    return batch_size / (ms / 1000.0)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--runs", type=int, default=5, help="timed batches (median)")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--quick", action="store_true", help="tiny settings (test suite)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = p.parse_args(argv)
    if args.quick:
        args.batch_size, args.runs, args.size = 2, 1, 64
    from keras_sepvit.export.profiling import machine_description

    results = {}  # (model, jit) -> images/s
    for name, build in _models(args.size).items():
        model = build()
        for jit in (False, True):
            results[name, jit] = images_per_second(
                model, args.batch_size, args.runs, args.size, jit
            )
            print(f"  {name}, XLA {'on' if jit else 'off'}: {results[name, jit]:.1f} img/s")
    header = (
        f"Keras inference throughput, batch {args.batch_size}, {args.size}x{args.size}, TF "
        f"backend, median of {args.runs}; {machine_description(('keras', 'tensorflow'))}"
    )
    lines = [header, "", "| model | XLA | images/s | SepViT-T / ConvNeXt-T |", "|---|---|---|---|"]
    for (name, jit), rate in results.items():
        ratio = "" if name == "SepViT-T" else f"{results['SepViT-T', jit] / rate:.2f}x"
        lines.append(f"| {name} | {'on' if jit else 'off'} | {rate:.2f} | {ratio} |")
    table = "\n".join(lines)
    print(table)
    if not args.quick:
        _save(args.out, table, results)
    return results


def _save(folder, table, results):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "inference_throughput.md"), "w") as f:
        f.write(table + "\n")
    names = sorted({k[0] for k in results}, key=lambda n: n != "SepViT-T")
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, jit in enumerate((False, True)):
        ax.bar(np.arange(len(names)) + i * 0.4, [results[n, jit] for n in names], 0.4,
               label=f"XLA {'on' if jit else 'off'}")  # fmt: skip
    ax.set_xticks(np.arange(len(names)) + 0.2)
    ax.set_xticklabels(names)
    ax.set_ylabel("images / s (higher is better)")
    ax.set_title("Keras inference throughput")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(folder, "inference_throughput.png"), dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
