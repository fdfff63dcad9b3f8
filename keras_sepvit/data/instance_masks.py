"""Instance masks for the detection pipelines (Mask R-CNN; tf.data, TensorFlow only).

COCO-JSON `segmentation`s are read once, when a folder is loaded, into
compressed RLEs (`segmentation_rle`: polygons, compressed or uncompressed
RLE, checked against the decoded image's size) and decoded per example in
the pipeline (`decode_masks`), so a COCO-sized folder keeps a few hundred
bytes per instance in memory, not its pixels. `resize_masks`, `flip_masks`
and `pad_masks` move (n, H, W) masks exactly as `keras_sepvit.data.detection`
moves the image and its boxes (nearest-neighbour resize, as mmdetection's
`BitmapMasks.rescale`).
"""

import math

import numpy as np

MIN_POLYGON = 6  # coordinates: 3 points (mmdetection drops shorter polygons too)


def _mask_api():
    try:
        from pycocotools import mask as mask_api
    except ImportError as err:  # pragma: no cover - the [hub] extra installs it
        raise ImportError("Instance masks need pycocotools: pip install keras-sepvit[hub]") from err
    return mask_api


def _compressed_length(counts):
    """Pixels covered by a compressed COCO RLE string (pycocotools' `rleFrString` rule)."""
    runs, position = [], 0
    while position < len(counts):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(counts):
                raise ValueError("it ends inside a number")
            c = ord(counts[position]) - 48
            if not 0 <= c < 64:
                raise ValueError(f"it holds the character {counts[position]!r}")
            value |= (c & 0x1F) << (5 * shift)
            more = bool(c & 0x20)
            position, shift = position + 1, shift + 1
            if not more and c & 0x10:
                value |= -1 << (5 * shift)
        if len(runs) > 2:  # runs after the third are stored as differences
            value += runs[-2]
        if value < 0:
            raise ValueError("it holds a negative run")
        runs.append(value)
    return sum(runs)


def segmentation_rle(segmentation, height, width):
    """A COCO `segmentation` -> its compressed RLE counts (bytes) on a height x width image.

    Polygons (a list of [x0, y0, x1, y1, ...] lists; parts shorter than 3
    points are dropped), an uncompressed RLE (`{"size", "counts": [...]}`) or
    a compressed one (`"counts"` a string). Raises `ValueError` with a phrase
    saying what is wrong (the caller names the file and the annotation).
    """
    mask_api = _mask_api()
    if isinstance(segmentation, list):
        polygons = []
        for part in segmentation:
            if not isinstance(part, (list, tuple)) or not all(
                isinstance(v, (int, float)) and math.isfinite(v) for v in part
            ):
                raise ValueError(f"segmentation polygon {str(part)[:60]} is not a list of numbers")
            if len(part) >= MIN_POLYGON and len(part) % 2 == 0:
                polygons.append([float(v) for v in part])
        if not polygons:
            raise ValueError(
                f"segmentation {str(segmentation)[:60]} has no polygon of 3 or more points"
            )
        return mask_api.merge(mask_api.frPyObjects(polygons, height, width))["counts"]
    if not isinstance(segmentation, dict) or not {"size", "counts"} <= set(segmentation):
        raise ValueError(
            f"segmentation {str(segmentation)[:60]} is neither polygons nor an RLE "
            "({'size': [height, width], 'counts': ...})"
        )
    size, counts = segmentation["size"], segmentation["counts"]
    if list(size) != [height, width]:
        raise ValueError(f"segmentation size {size} is not the image's [{height}, {width}]")
    if isinstance(counts, list):
        if not all(isinstance(c, int) and c >= 0 for c in counts) or sum(counts) != height * width:
            raise ValueError(
                f"segmentation RLE counts must be non-negative ints summing to {height * width} "
                f"pixels. Received: {len(counts)} counts summing to {sum(map(float, counts)):g}"
            )
        return mask_api.frPyObjects({"size": [height, width], "counts": counts}, height, width)[
            "counts"
        ]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii", "replace")
    if not isinstance(counts, str):
        raise ValueError(f"segmentation RLE counts {str(counts)[:60]} is not a list or a string")
    try:
        pixels = _compressed_length(counts)
    except ValueError as e:
        raise ValueError(f"segmentation RLE string {counts[:40]!r} is damaged: {e}") from None
    if pixels != height * width:
        raise ValueError(
            f"segmentation RLE string {counts[:40]!r} covers {pixels} pixels, not the image's "
            f"{height * width}"
        )
    return counts.encode("ascii")


def decode_masks(counts, height, width):
    """Compressed RLE counts (n,) bytes -> (n, height, width) uint8 0/1 (NumPy)."""
    height, width = int(height), int(width)
    if not len(counts):
        return np.zeros((0, height, width), "uint8")
    rles = [{"size": [height, width], "counts": bytes(c)} for c in counts]
    return np.ascontiguousarray(_mask_api().decode(rles).transpose(2, 0, 1))


def tf_decode_masks(counts, size):
    """`decode_masks` in a tf.data map: (n,) string tensor, (2,) size -> (n, H, W) uint8."""
    import tensorflow as tf

    masks = tf.numpy_function(decode_masks, [counts, size[0], size[1]], tf.uint8, stateful=False)
    return tf.reshape(masks, tf.concat([tf.shape(counts), tf.cast(size, tf.int32)], 0))


def resize_masks(masks, size):
    """(n, H, W) masks -> (n, size[0], size[1]), nearest neighbour (half-pixel centres)."""
    import tensorflow as tf

    channels = tf.transpose(masks, [1, 2, 0])  # (H, W, n)
    resized = tf.image.resize(channels, size, method="nearest")
    return tf.transpose(resized, [2, 0, 1])


def flip_masks(masks):
    """(n, H, W) masks mirrored left-right (as `detection.train_dataset` flips images)."""
    import tensorflow as tf

    return tf.reverse(masks, axis=[2])


def pad_masks(masks, side):
    """(n, h, w) masks padded with zeros at the bottom/right to (n, side, side)."""
    import tensorflow as tf

    shape = tf.shape(masks)
    return tf.pad(masks, [[0, 0], [0, side - shape[1]], [0, side - shape[2]]])
