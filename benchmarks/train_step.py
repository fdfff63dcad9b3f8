"""Training-step throughput of SepViT-T per Keras backend against ConvNeXt-T and Swin-T, one run.

    python benchmarks/train_step.py [--batch-size 16] [--steps 3] [--size 224]
        [--backends tensorflow,jax,torch] [--quick]

Each backend runs in its own child process (Keras fixes the backend per
process, and PyTorch work stays out of a process that imported TensorFlow:
TensorFlow then triton is a segmentation fault). In a backend's process
SepViT-T and `keras.applications.ConvNeXtTiny` take the same AdamW step
(label-smoothed cross-entropy, `train_on_batch`) on random [0, 255] images,
with the jit settings worth comparing (TensorFlow: XLA off and on; JAX: jit
on, since off is op-by-op eager; PyTorch: eager); Swin-T from `transformers`
takes the same step in PyTorch in another child. Prints images/s and the
ratios SepViT-T / peer (above 1: SepViT-T is faster) as a Markdown table and
writes it to benchmarks/results/train_step.md.
"""

import argparse
import json
import os
import subprocess
import sys

import numpy as np

JIT = {"tensorflow": (False, True), "jax": (True,), "torch": (False,)}
MARK = "RESULT "


def _rate(step, batch_size, steps):
    import time

    for _ in range(2):  # trace / compile, then one warm step
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return batch_size / float(np.median(times))


def keras_child(backend, jit, batch_size, steps, size):
    """images/s of SepViT-T and ConvNeXtTiny in this process (its KERAS_BACKEND)."""
    import keras

    import keras_sepvit

    assert keras.backend.backend() == backend, keras.backend.backend()
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch_size, size, size, 3)).astype("float32")
    y = np.eye(1000, dtype="float32")[rng.integers(0, 1000, batch_size)]
    models = {
        "SepViT-T": lambda: keras_sepvit.SepViTTiny(input_shape=(size, size, 3)),
        "ConvNeXtTiny": lambda: keras.applications.ConvNeXtTiny(
            weights=None, input_shape=(size, size, 3)
        ),
    }
    rates = {}
    for name, build in models.items():
        model = build()
        model.compile(
            keras.optimizers.AdamW(1e-3),
            keras.losses.CategoricalCrossentropy(label_smoothing=0.1),
            jit_compile=jit,
        )
        rates[name] = _rate(lambda m=model: m.train_on_batch(x, y), batch_size, steps)
    return rates


def swin_child(batch_size, steps, size):
    """images/s of Swin-T (transformers, random weights) in PyTorch, eager, float32."""
    import torch
    import transformers as hf

    config = hf.SwinConfig(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24],
                           window_size=7, image_size=size, num_labels=1000)  # fmt: skip
    model = hf.SwinForImageClassification(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    x = torch.rand(batch_size, 3, size, size) * 255
    y = torch.randint(0, 1000, (batch_size,))

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(pixel_values=x).logits, y).backward()
        optimizer.step()

    return {"Swin-T": _rate(step, batch_size, steps)}


def _child(args, *extra, backend="tensorflow"):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    cmd = [sys.executable, os.path.abspath(__file__), "--batch-size", str(args.batch_size),
           "--steps", str(args.steps), "--size", str(args.size), *extra]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)][-1]
    return json.loads(line[len(MARK) :])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=3, help="timed steps (median)")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--backends", default="tensorflow,jax,torch")
    p.add_argument("--quick", action="store_true", help="tiny settings, TF only (CI smoke test)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    p.add_argument("--child", choices=["keras", "swin"], help=argparse.SUPPRESS)
    p.add_argument("--jit", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child == "keras":
        backend = os.environ["KERAS_BACKEND"]
        rates = keras_child(backend, bool(args.jit), args.batch_size, args.steps, args.size)
        print(MARK + json.dumps(rates), flush=True)
        return rates
    if args.child == "swin":
        rates = swin_child(args.batch_size, args.steps, args.size)
        print(MARK + json.dumps(rates), flush=True)
        return rates
    backends = args.backends.split(",")
    unknown = sorted(set(backends) - set(JIT))
    if unknown:
        raise SystemExit(f"error: backends are {sorted(JIT)}. Received: --backends {unknown}")
    if args.quick:
        args.batch_size, args.steps, args.size = 1, 1, 224  # Swin-T needs a multiple of 224
        backends = ["tensorflow"]
    swin = _child(args, "--child", "swin", backend="torch")["Swin-T"]
    rows = []
    for backend in backends:
        for jit in (False,) if args.quick else JIT[backend]:
            rates = _child(args, "--child", "keras", "--jit", str(int(jit)), backend=backend)
            rows.append({"backend": backend, "jit": jit, **rates, "Swin-T": swin})
    from keras_sepvit.export.profiling import machine_description

    versions = ("keras", "tensorflow", "jax", "torch", "transformers")
    header = (
        f"Train step (AdamW, label smoothing 0.1), batch {args.batch_size}, "
        f"{args.size}x{args.size}, float32, median of {args.steps}; "
        f"{machine_description(versions)}; Swin-T (PyTorch eager): {swin:.2f} images/s"
    )
    lines = [
        header,
        "",
        "| backend | jit | SepViT-T images/s | ConvNeXtTiny images/s | SepViT-T / ConvNeXtTiny "
        "| SepViT-T / Swin-T (PyTorch) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['backend']} | {'on' if r['jit'] else 'off'} | {r['SepViT-T']:.2f} | "
            f"{r['ConvNeXtTiny']:.2f} | {r['SepViT-T'] / r['ConvNeXtTiny']:.2f}x | "
            f"{r['SepViT-T'] / swin:.2f}x |"
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
