"""GPU throughput, the paper's Fig. 1 setting: SepViT under Keras (JAX) vs Swin / PVTv2 in PyTorch.

    python benchmarks/gpu_throughput.py [--batch-size 192] [--runs 20] [--quick]

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
"""

import argparse
import os
import platform
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
    p.add_argument("--batch-size", type=int, default=192)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--runs", type=int, default=20, help="timed batches (median)")
    p.add_argument("--no-mixed", action="store_true", help="float32 instead of float16")
    p.add_argument("--quick", action="store_true", help="tiny settings on the CPU (test suite)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = p.parse_args(argv)
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
        results[sepvit] = sepvit_rate(sepvit, args.batch_size, args.size, args.runs, mixed)
        print(f"  {sepvit}: {results[sepvit]:.1f} img/s; TensorFlow imported: "
              f"{'tensorflow' in sys.modules}", flush=True)  # fmt: skip
        for peer in peers:
            results[peer] = torch_rate(peer, args.batch_size, args.size, args.runs, mixed)
            print(f"  {peer}: {results[peer]:.1f} img/s", flush=True)
    device = str(jax.devices()[0].device_kind)
    header = (
        f"Inference throughput, batch {args.batch_size}, {args.size}x{args.size}, "
        f"{'float16 mixed precision' if mixed else 'float32'}, median of {args.runs}; {device}; "
        f"SepViT: keras {keras.__version__} + jax {jax.__version__}; peers: torch "
        f"{torch.__version__} (transformers); {platform.machine()}"
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
        _save(args.out, table, results)
    return results


def _save(folder, table, results):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "gpu_throughput.md"), "w") as f:
        f.write(table + "\n")
    names = list(results)
    fig, ax = plt.subplots(figsize=(8, 4))
    colors = ["C0" if n.startswith("SepViT") else "C1" for n in names]
    ax.bar(names, [results[n] for n in names], color=colors)
    ax.set_ylabel("images / s (higher is better)")
    ax.set_title("GPU inference throughput")
    fig.tight_layout()
    fig.savefig(os.path.join(folder, "gpu_throughput.png"), dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
