"""Prints the variant table: parameters and MACs against the paper and the authors' code.

    python -m keras_sepvit.summary [--forward] [--parity]

`--forward` also runs each variant on a random image at 224x224 and at a
non-square 160x256 (same weights) and checks the output; `--parity` compares
SepViT-Lite with the authors' reference outputs (needs the reference files).
TensorFlow backend (MACs are read from the traced TF graph).
"""

import argparse
import time

import numpy as np

# Paper, Table 1/2/8 (params M, GFLOPs as printed) and the authors' code
# measured by the reference README (params M, GMACs at 224).
PAPER = {"lite": (3.7, 0.6), "tiny": (31.2, 4.5), "small": (46.6, 7.5), "base": (82.3, 13.1)}
AUTHORS = {
    "lite": (3.661, 0.568),
    "tiny": (31.183, 4.519),
    "small": (46.571, 7.455),
    "base": (82.377, 13.055),
}


def _forward_check(model_fn, weights):
    """Runs the same weights at 224x224 and 160x256; returns a short verdict."""
    results = []
    for shape in ((224, 224), (160, 256)):
        model = model_fn(input_shape=shape + (3,))
        model.set_weights(weights)
        image = np.random.default_rng(0).uniform(0, 255, (1,) + shape + (3,)).astype("float32")
        start = time.perf_counter()
        probs = np.asarray(model(image, training=False))
        elapsed = time.perf_counter() - start
        ok = probs.shape == (1, 1000) and np.isfinite(probs).all()
        ok = ok and abs(float(probs.sum()) - 1.0) < 1e-3
        results.append(f"{shape[0]}x{shape[1]} {'ok' if ok else 'FAILED'} ({elapsed:.2f}s)")
    return ", ".join(results)


def variant_rows(forward=False):
    from keras_sepvit.macs import count_macs
    from keras_sepvit.model import VARIANTS

    rows = []
    for variant, model_fn in VARIANTS.items():
        model = model_fn()
        params = model.count_params() / 1e6
        gmacs = count_macs(model) / 1e9
        row = {
            "variant": model.name,
            "params_m": params,
            "gmacs": gmacs,
            "authors_params_m": AUTHORS[variant][0],
            "authors_gmacs": AUTHORS[variant][1],
            "paper_params_m": PAPER[variant][0],
            "paper_gflops": PAPER[variant][1],
        }
        if forward:
            row["forward"] = _forward_check(model_fn, model.get_weights())
        rows.append(row)
    return rows


def markdown_table(rows):
    header = "| variant | params (M) | authors' code | paper | GMACs @224 | authors' code | paper |"
    lines = [header, "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['params_m']:.3f} | {r['authors_params_m']:.3f} | "
            f"{r['paper_params_m']} | {r['gmacs']:.3f} | {r['authors_gmacs']:.3f} | "
            f"{r['paper_gflops']} |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--forward", action="store_true", help="run a forward-pass check")
    parser.add_argument("--parity", action="store_true", help="compare with the reference")
    args = parser.parse_args(argv)
    rows = variant_rows(forward=args.forward)
    print(markdown_table(rows))
    if args.forward:
        print("\nForward pass (random [0, 255] image, softmax output, same weights):")
        for r in rows:
            print(f"  {r['variant']}: {r['forward']}")
    if args.parity:
        from keras_sepvit.parity import TOLERANCE, reference_max_differences

        diffs = reference_max_differences()
        verdict = "ok" if max(diffs.values()) <= TOLERANCE else "FAILED"
        detail = ", ".join(f"{k} {v:.1e}" for k, v in diffs.items())
        print(
            f"\nSepViT-Lite vs the authors' reference (max |diff|, tol {TOLERANCE}): {detail}"
            f" -> {verdict}"
        )


if __name__ == "__main__":
    main()
