"""Per-op profile of a .tflite file under LiteRT's XNNPACK delegate.

    python benchmarks/tflite_profile.py model.tflite [--runs 30] [--top 15] [--threads 1]
    python benchmarks/tflite_profile.py model.tflite --without-amx   # as a CPU without AMX would
    python benchmarks/tflite_profile.py --quick      # tiny SepViT-Lite, float32 and dynamic

Prints where the time goes (per op type and the slowest ops) and what XNNPACK
did not take, so that the next regression is visible. How each op is timed
alone and how delegation is read: `keras_sepvit.export.profiling`.
"""

import argparse
import os
import tempfile

from keras_sepvit.export import amx
from keras_sepvit.export.profiling import CLOCKS, profile, report


def _quick(runs, top, threads, clock):
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras_sepvit
    from keras_sepvit.export import to_tflite

    model = keras_sepvit.SepViTLite(input_shape=(32, 32, 3), classes=4)
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for quantization in (None, "dynamic"):
            name = quantization or "float32"
            path = to_tflite(model, os.path.join(folder, f"sepvit_lite_32_{name}.tflite"),
                             quantization=quantization)  # fmt: skip
            results[name] = profile(path, runs=runs, num_threads=threads, clock=clock)
            print(report(results[name], top) + "\n", flush=True)
    return results


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("path", nargs="?", help="the .tflite file")
    p.add_argument("--runs", type=int, default=30, help="timed invokes per op (median)")
    p.add_argument("--top", type=int, default=15, help="how many of the slowest ops to list")
    p.add_argument("--threads", type=int, default=1, help="interpreter threads")
    p.add_argument("--clock", choices=sorted(CLOCKS),
                   help="cpu (thread CPU time; default for 1 thread) or wall")  # fmt: skip
    p.add_argument("--quick", action="store_true",
                   help="profile a tiny SepViT-Lite, float32 and dynamic (test suite)")  # fmt: skip
    amx.add_benchmark_flag(p)
    args = p.parse_args(argv)
    amx.apply_benchmark_flag(args)
    if args.quick:
        return _quick(min(args.runs, 3), min(args.top, 5), args.threads, args.clock)
    if not args.path:
        p.error("give a .tflite file, or --quick")
    if not os.path.isfile(args.path):
        p.error(f"no such file: path={args.path!r}")
    result = profile(args.path, runs=args.runs, num_threads=args.threads, clock=args.clock)
    print(report(result, args.top))
    return result


if __name__ == "__main__":
    main()
