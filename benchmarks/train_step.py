"""Training-step throughput of SepViT-Lite against keras.applications peers, same run.

    python benchmarks/train_step.py [--batch-size 32] [--steps 10] [--size 224] [--quick]

Each model gets the same AdamW step (label-smoothed cross-entropy) on random
[0, 255] images, TF backend, XLA on and off; prints images/s and the ratio
SepViT / peer as a Markdown table and writes it to benchmarks/results/.
"""

import argparse
import os
import platform

import numpy as np

PEERS = {
    "MobileNetV2": lambda shape: __import__("keras").applications.MobileNetV2(
        weights=None, input_shape=shape
    ),
    "EfficientNetB0": lambda shape: __import__("keras").applications.EfficientNetB0(
        weights=None, input_shape=shape
    ),
}


def images_per_second(model, batch_size, steps, size, jit_compile):
    import keras

    model.compile(
        keras.optimizers.AdamW(1e-3),
        keras.losses.CategoricalCrossentropy(label_smoothing=0.1),
        jit_compile=jit_compile,
    )
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch_size, size, size, 3)).astype("float32")
    y = np.eye(model.output_shape[-1], dtype="float32")[rng.integers(0, 1000, batch_size)]
    from keras_sepvit.export import median_latency_ms

    # 2 warm-up steps trace/compile.
    ms = median_latency_ms(lambda _: model.train_on_batch(x, y), None, steps, warmup=2)
    return batch_size / (ms / 1000.0)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=10, help="timed steps (median)")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--quick", action="store_true", help="tiny settings (CI smoke test)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = p.parse_args(argv)
    if args.quick:
        args.batch_size, args.steps, args.size = 2, 1, 64
    import keras
    import tensorflow as tf

    import keras_sepvit

    shape = (args.size, args.size, 3)
    rows = []
    for jit in (False,) if args.quick else (False, True):
        sepvit = images_per_second(
            keras_sepvit.SepViTLite(input_shape=shape), args.batch_size, args.steps, args.size, jit
        )
        rows.append(("SepViT-Lite", jit, sepvit, None))
        for name, make in PEERS.items():
            peer = images_per_second(make(shape), args.batch_size, args.steps, args.size, jit)
            rows.append((name, jit, peer, sepvit / peer))
    header = (
        f"Train step, batch {args.batch_size}, {args.size}x{args.size}, median of "
        f"{args.steps}; {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"keras {keras.__version__}, tensorflow {tf.__version__}"
    )
    lines = [header, "", "| model | XLA | images/s | SepViT-Lite / model |", "|---|---|---|---|"]
    for name, jit, ips, ratio in rows:
        lines.append(
            f"| {name} | {'on' if jit else 'off'} | {ips:.1f} | "
            f"{'' if ratio is None else f'{ratio:.2f}x'} |"
        )
    table = "\n".join(lines)
    print(table)
    if not args.quick:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "train_step.md"), "w") as f:
            f.write(table + "\n")
    return rows


if __name__ == "__main__":
    main()
