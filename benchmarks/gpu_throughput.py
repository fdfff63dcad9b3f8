"""GPU throughput, the paper's Fig. 1 setting: SepViT under Keras (JAX) vs Swin / PVTv2 in PyTorch.

    python benchmarks/gpu_throughput.py [--batch-size 192] [--runs 20] [--quick]
    python benchmarks/gpu_throughput.py --mode train [--batch-size 64] [--quick]

Runs on a machine with JAX, PyTorch and transformers and no TensorFlow (the
lent GPU machine): SepViT-T/S/B with the JAX backend and `mixed_float16`,
compiled by `model.predict_on_batch`; Swin-T/S/B and PVTv2-b2/b3 from
Hugging Face `transformers` configs (random weights) in PyTorch under
`torch.autocast(float16)`, channels-last, `torch.inference_mode`. Batch 192
at 224x224 by default, images/s from the median of --runs timed batches
after warm-up, each on the same GPU in the same run. Prints a Markdown table
with SepViT / peer ratios (throughput: above 1 means SepViT is faster) and
writes it and a PNG plot to benchmarks/results/. Never part of CI (which has
no GPU); `--quick` runs tiny settings on the CPU to keep the script working.

`--mode train` times a training step instead, on synthetic data (no
TensorFlow, so no tf.data): SepViT with the recipe's optimizer
(`keras_sepvit.training.make_optimizer`: AdamW, decay exclusions, warm-up
cosine, clipping at norm 5), label smoothing 0.1, `train_on_batch` compiled
by XLA, over every local device with `keras.distribution.DataParallel`;
the peers with `torch.optim.AdamW`, the same loss and clipping, under
autocast, channels-last, eager.
"""

import argparse
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np  # noqa: E402

PAIRS = {  # SepViT variant -> its peers in the paper's Fig. 1 / Table 2
    "SepViT-T": ("Swin-T", "PVTv2-b2"),
    "SepViT-S": ("Swin-S", "PVTv2-b3"),
    "SepViT-B": ("Swin-B",),
}
SWIN = {  # embed_dim, depths, heads
    "Swin-T": (96, [2, 2, 6, 2], [3, 6, 12, 24]),
    "Swin-S": (96, [2, 2, 18, 2], [3, 6, 12, 24]),
    "Swin-B": (128, [2, 2, 18, 2], [4, 8, 16, 32]),
}
PVT = {"PVTv2-b2": [3, 4, 6, 3], "PVTv2-b3": [3, 4, 18, 3]}


def _torch_peer(name):
    import transformers as hf

    if name in SWIN:
        dim, depths, heads = SWIN[name]
        config = hf.SwinConfig(embed_dim=dim, depths=depths, num_heads=heads, window_size=7,
                               num_labels=1000)  # fmt: skip
        return hf.SwinForImageClassification(config)
    config = hf.PvtV2Config(depths=PVT[name], hidden_sizes=[64, 128, 320, 512],
                            num_attention_heads=[1, 2, 5, 8], sr_ratios=[8, 4, 2, 1],
                            mlp_ratios=[8, 8, 4, 4], num_labels=1000)  # fmt: skip
    return hf.PvtV2ForImageClassification(config)


def _median_rate(step, batch_size, runs):
    from keras_sepvit.export import median_latency_ms

    ms = median_latency_ms(lambda _: step(), None, runs, warmup=3)  # compile and warm up
    return batch_size / (ms / 1000.0)


def sepvit_rate(name, batch_size, size, runs, mixed):
    import keras

    import keras_sepvit

    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    build = {"SepViT-T": keras_sepvit.SepViTTiny, "SepViT-S": keras_sepvit.SepViTSmall,
             "SepViT-B": keras_sepvit.SepViTBase}[name]  # fmt: skip
    model = build(input_shape=(size, size, 3))
    x = np.random.default_rng(0).uniform(0, 255, (batch_size, size, size, 3)).astype("float32")
    rate = _median_rate(lambda: np.asarray(model.predict_on_batch(x)), batch_size, runs)
    keras.mixed_precision.set_global_policy("float32")
    return rate


def sepvit_train_rate(name, batch_size, size, runs, mixed):
    import keras

    import keras_sepvit
    from keras_sepvit import training
    from keras_sepvit.training import distribution

    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    distribution.distribution_scope()  # DataParallel over every local device
    build = {"SepViT-T": keras_sepvit.SepViTTiny, "SepViT-S": keras_sepvit.SepViTSmall,
             "SepViT-B": keras_sepvit.SepViTBase}[name]  # fmt: skip
    model = build(input_shape=(size, size, 3), drop_path_rate=0.1)
    model.compile(
        training.make_optimizer(model, 1e-3, total_steps=1000, warmup_steps=10),
        keras.losses.CategoricalCrossentropy(label_smoothing=0.1),
        jit_compile=True,
    )
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch_size, size, size, 3)).astype("float32")
    y = np.eye(1000, dtype="float32")[rng.integers(0, 1000, batch_size)]
    rate = _median_rate(lambda: float(model.train_on_batch(x, y)), batch_size, runs)
    keras.mixed_precision.set_global_policy("float32")
    keras.distribution.set_distribution(None)
    return rate


def torch_train_rate(name, batch_size, size, runs, mixed):
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = _torch_peer(name).train().to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    scaler = torch.amp.GradScaler(device, enabled=mixed and device == "cuda")
    x = torch.rand(batch_size, 3, size, size, device=device).to(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch_size,), device=device)
    dtype = torch.float16 if device == "cuda" else torch.bfloat16

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=dtype, enabled=mixed):
            loss = loss_fn(model(pixel_values=x).logits.float(), y)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        scaler.step(optimizer)
        scaler.update()
        loss.item()

    return _median_rate(step, batch_size, runs)


def torch_rate(name, batch_size, size, runs, mixed):
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = _torch_peer(name).eval().to(device).to(memory_format=torch.channels_last)
    x = torch.rand(batch_size, 3, size, size, device=device).to(memory_format=torch.channels_last)
    dtype = torch.float16 if device == "cuda" else torch.bfloat16

    def step():
        with torch.inference_mode(), torch.autocast(device, dtype=dtype, enabled=mixed):
            model(pixel_values=x).logits.float().cpu()

    return _median_rate(step, batch_size, runs)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", default="inference", choices=["inference", "train"])
    p.add_argument("--batch-size", type=int, default=None, help="default 192, train 64")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--runs", type=int, default=20, help="timed batches (median)")
    p.add_argument("--no-mixed", action="store_true", help="float32 instead of float16")
    p.add_argument("--quick", action="store_true", help="tiny settings on the CPU (test suite)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = p.parse_args(argv)
    if args.batch_size is None:
        args.batch_size = 64 if args.mode == "train" else 192
    train = args.mode == "train"
    keras_rate = sepvit_train_rate if train else sepvit_rate
    peer_rate = torch_train_rate if train else torch_rate
    pairs = PAIRS
    if args.quick:
        args.batch_size, args.size, args.runs = 1, 224, 1  # Swin needs a multiple of 224
        pairs = {"SepViT-T": ("Swin-T",)}
    mixed = not args.no_mixed and not args.quick
    import jax
    import keras
    import torch

    results = {}
    for sepvit, peers in pairs.items():
        results[sepvit] = keras_rate(sepvit, args.batch_size, args.size, args.runs, mixed)
        print(f"  {sepvit}: {results[sepvit]:.1f} img/s; TensorFlow imported: "
              f"{'tensorflow' in sys.modules}", flush=True)  # fmt: skip
        for peer in peers:
            results[peer] = peer_rate(peer, args.batch_size, args.size, args.runs, mixed)
            print(f"  {peer}: {results[peer]:.1f} img/s", flush=True)
    from keras_sepvit.export.profiling import machine_description  # no TensorFlow

    device = f"{len(jax.devices())} x {jax.devices()[0].device_kind}"
    header = (
        f"{'Training' if train else 'Inference'} throughput, batch {args.batch_size}, "
        f"{args.size}x{args.size}, "
        f"{'float16 mixed precision' if mixed else 'float32'}, median of {args.runs}; {device}; "
        f"SepViT: keras {keras.__version__} + jax {jax.__version__}; peers: torch "
        f"{torch.__version__} (transformers); host {machine_description()}"
    )
    lines = [header, "", "| model | images/s | SepViT / model |", "|---|---|---|"]
    for sepvit, peers in pairs.items():
        lines.append(f"| {sepvit} | {results[sepvit]:.1f} | |")
        for peer in peers:
            ratio = results[sepvit] / results[peer]
            lines.append(f"| {peer} | {results[peer]:.1f} | {ratio:.2f}x |")
    table = "\n".join(lines)
    print(table)
    if not args.quick:
        _save(args.out, table, results, args.mode)
    return results


def _save(folder, table, results, mode="inference"):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(folder, exist_ok=True)
    stem = "gpu_throughput" if mode == "inference" else "gpu_train_throughput"
    with open(os.path.join(folder, f"{stem}.md"), "w") as f:
        f.write(table + "\n")
    names = list(results)
    fig, ax = plt.subplots(figsize=(8, 4))
    colors = ["C0" if n.startswith("SepViT") else "C1" for n in names]
    ax.bar(names, [results[n] for n in names], color=colors)
    ax.set_ylabel("images / s (higher is better)")
    ax.set_title(f"GPU {mode} throughput")
    fig.tight_layout()
    fig.savefig(os.path.join(folder, f"{stem}.png"), dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
