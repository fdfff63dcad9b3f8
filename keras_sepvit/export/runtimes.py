"""Runtimes for exported files: LiteRT (.tflite) and ONNX Runtime (.onnx) runners.

`keras_sepvit.export` writes the files and checks them with these; they are
also what an application (or `examples/run_tflite.py`) runs. Both take
float32 images (N, H, W, C) and return an array, or a dict by output name
for a file with several outputs (a detector's `bbox_regression` /
`cls_logits`).
"""

import os

import numpy as np

from keras_sepvit.tf_logging import converter_notices_dropped

__all__ = ["ONNXRunner", "TFLiteRunner", "median_latency_ms", "tflite_ops"]


def median_latency_ms(run, inputs, runs=30, warmup=5):
    """Median wall time in ms of `run(inputs)` over `runs` calls after `warmup` calls."""
    import time

    for _ in range(warmup):
        run(inputs)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run(inputs)
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times))


def tflite_ops(path):
    """The set of op names in a .tflite file (builtins, or e.g. 'FlexErf' for Flex ops)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=os.fspath(path))
    return {op["op_name"] for op in interpreter._get_ops_details()}


class TFLiteRunner:
    """Runs a .tflite model with the LiteRT interpreter, handling its input
    and output quantization (what a phone app does).

    Returns an array for a one-output model (a classifier, a segmenter) and
    a dict `{name: array}` for a model with named outputs (a detector's
    `bbox_regression` / `cls_logits`).
    """

    def __init__(self, path, num_threads=None):
        from ai_edge_litert.interpreter import Interpreter

        with converter_notices_dropped():  # LiteRT's "Created ... XNNPACK delegate" notice
            self.interpreter = Interpreter(model_path=os.fspath(path), num_threads=num_threads)
            self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.outputs = self.interpreter.get_output_details()
        self.output = self.outputs[0]
        self.names = None
        if len(self.outputs) > 1:
            signatures = self.interpreter._get_full_signature_list() or {}
            by_index = {}
            for signature in signatures.values():
                by_index.update({i: name for name, i in signature["outputs"].items()})
            self.names = [by_index.get(d["index"], d["name"]) for d in self.outputs]

    def __call__(self, images):
        images = np.asarray(images, "float32")
        batch = int(self.input["shape_signature"][0])
        if batch <= 1:  # batch 1 or a dynamic batch: one image at a time
            results = [self._invoke(image[None]) for image in images]
        else:  # a static batch of N: groups of N, the last one padded
            results = []
            for start in range(0, len(images), batch):
                group = images[start : start + batch]
                padded = np.concatenate([group, np.repeat(group[-1:], batch - len(group), 0)])
                results.append([y[: len(group)] for y in self._invoke(padded)])
        outputs = [np.concatenate([r[i] for r in results]) for i in range(len(self.outputs))]
        if self.names is None:
            return outputs[0]
        return dict(zip(self.names, outputs))

    def _invoke(self, x):
        scale, zero = self.input["quantization"]
        if self.input["dtype"] != np.float32:
            info = np.iinfo(self.input["dtype"])
            x = np.clip(np.round(x / scale + zero), info.min, info.max)
        self.interpreter.set_tensor(self.input["index"], x.astype(self.input["dtype"]))
        self.interpreter.invoke()
        outputs = []
        for detail in self.outputs:
            y = self.interpreter.get_tensor(detail["index"])
            scale, zero = detail["quantization"]
            if detail["dtype"] != np.float32 and scale:  # scale 0: not quantized (int outputs)
                y = (y.astype("float32") - zero) * scale
            outputs.append(y)
        return outputs


class ONNXRunner:
    """Runs an ONNX model in ONNX Runtime (CPU), as `TFLiteRunner` does a
    .tflite file: images in, outputs out (an array, or a dict by output name
    for a model with several), in chunks of the file's static batch if it
    has one (a short last chunk is padded with its last image).

    Args:
        path: the `.onnx` file.
        num_threads: int or None. ONNX Runtime intra-op threads (None: its
            default, all cores).
    """

    def __init__(self, path, num_threads=None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if num_threads is not None:
            options.intra_op_num_threads = num_threads
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            os.fspath(path), options, providers=["CPUExecutionProvider"]
        )
        self.input = self.session.get_inputs()[0]
        batch = self.input.shape[0]
        self.batch_size = batch if isinstance(batch, int) else None
        names = [o.name for o in self.session.get_outputs()]
        self.names = names if len(names) > 1 else None

    def __call__(self, images):
        images = np.asarray(images, "float32")
        if self.batch_size is None:
            outputs = self.session.run(None, {self.input.name: images})
        else:
            chunks = []
            for start in range(0, len(images), self.batch_size):
                chunk = images[start : start + self.batch_size]
                count = len(chunk)
                if count < self.batch_size:
                    padding = np.repeat(chunk[-1:], self.batch_size - count, axis=0)
                    chunk = np.concatenate([chunk, padding])
                chunks.append([y[:count] for y in self.session.run(None, {self.input.name: chunk})])
            outputs = [np.concatenate([c[i] for c in chunks]) for i in range(len(chunks[0]))]
        if self.names is None:
            return outputs[0]
        return dict(zip(self.names, outputs))
