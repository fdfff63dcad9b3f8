""" "Digit scenes": a small offline detection / segmentation dataset.

Real handwritten digits (scikit-learn's bundled `load_digits`: 1,797 8x8
scans, no download) are scaled up and pasted without overlap on noisy
colour canvases. Every scene has boxes, class labels and a per-pixel class
mask, so one dataset trains and evaluates both detectors and segmenters on a
CPU in minutes. Train and test scenes use disjoint scans (every 5th scan is
held out), so test scores measure generalisation to unseen handwriting.

Layouts:
  images  (N, H, W, 3) uint8
  boxes   list of N float32 arrays (k, 4): x_min, y_min, x_max, y_max in
          pixels, exclusive max ("xyxy", keras-hub's bounding box format)
  labels  list of N int32 arrays (k,): the digit, 0..9
  masks   (N, H, W) uint8: 0 background, 1 + digit on the digit's strokes
  instances (N, H, W) uint8: 0 background, 1 + i on the strokes of the
          scene's i-th digit (its box `boxes[n][i]`); digits never overlap,
          so `instance_masks` gives each digit's mask for Mask R-CNN
"""

import numpy as np

NUM_CLASSES = 10
CLASS_NAMES = tuple(str(d) for d in range(NUM_CLASSES))
# Mask classes: background + the 10 digits.
NUM_MASK_CLASSES = NUM_CLASSES + 1
_STROKE = 5.0 / 16.0  # a scan pixel (0..16) at or above 5 is a stroke
_HELD_OUT_EVERY = 5


def _digit_scans(split):
    from sklearn.datasets import load_digits

    digits = load_digits()
    index = np.arange(len(digits.target))
    keep = index % _HELD_OUT_EVERY == 0 if split == "test" else index % _HELD_OUT_EVERY != 0
    return digits.images[keep] / 16.0, digits.target[keep].astype("int32")


def make_digit_scenes(
    num_scenes,
    image_size=(128, 128),
    digits_per_scene=(1, 4),
    digit_scale=(2, 4),
    split="train",
    seed=0,
):
    """Makes `num_scenes` scenes (see the module docstring for the layouts).

    Args:
        num_scenes: int. Number of scenes.
        image_size: (height, width). Canvas size; at least 8 * max scale.
        digits_per_scene: (min, max) digits per scene, inclusive.
        digit_scale: (min, max) integer upscaling of the 8x8 scans (8x8 ->
            16x16 .. 32x32 by default), inclusive.
        split: "train" or "test": which scans are used (disjoint).
        seed: int. Seed of the scene layout.

    Returns:
        dict with "images", "boxes", "labels", "masks", "instances".
    """
    if split not in ("train", "test"):
        raise ValueError(f"`split` must be 'train' or 'test'. Received: split={split!r}")
    height, width = (int(s) for s in image_size)
    low, high = (int(s) for s in digit_scale)
    if not 1 <= low <= high or min(height, width) < 8 * high:
        raise ValueError(
            "`digit_scale` must be (min, max) with 1 <= min <= max and the canvas at least "
            f"8 * max pixels. Received: digit_scale={digit_scale}, image_size={image_size}"
        )
    fewest, most = (int(n) for n in digits_per_scene)
    if not 1 <= fewest <= most:
        raise ValueError(
            f"`digits_per_scene` must be (min, max) with 1 <= min <= max. "
            f"Received: digits_per_scene={digits_per_scene}"
        )
    scans, targets = _digit_scans(split)
    rng = np.random.default_rng(seed)
    images = np.empty((num_scenes, height, width, 3), "uint8")
    masks = np.zeros((num_scenes, height, width), "uint8")
    instances = np.zeros((num_scenes, height, width), "uint8")
    all_boxes, all_labels = [], []
    for n in range(num_scenes):
        background = rng.uniform(0, 90, size=3)
        canvas = background + rng.normal(0, 12, size=(height, width, 3))
        occupied = np.zeros((height, width), bool)
        boxes, labels = [], []
        for _ in range(rng.integers(fewest, most + 1)):
            pick = rng.integers(len(scans))
            scale = int(rng.integers(low, high + 1))
            patch = np.kron(scans[pick], np.ones((scale, scale)))  # (8s, 8s) in [0, 1]
            strokes = patch >= _STROKE
            rows, cols = np.nonzero(strokes)
            top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
            side = patch.shape[0]
            for _attempt in range(20):  # a free place, else the digit is left out
                y = int(rng.integers(0, height - side + 1))
                x = int(rng.integers(0, width - side + 1))
                if not occupied[y + top : y + bottom, x + left : x + right].any():
                    break
            else:
                continue
            occupied[y + top : y + bottom, x + left : x + right] = True
            colour = rng.uniform(150, 255, size=3)
            region = canvas[y : y + side, x : x + side]
            region[:] = region * (1 - patch[..., None]) + colour * patch[..., None]
            masks[n, y : y + side, x : x + side][strokes] = targets[pick] + 1
            instances[n, y : y + side, x : x + side][strokes] = len(boxes) + 1
            boxes.append([x + left, y + top, x + right, y + bottom])
            labels.append(targets[pick])
        images[n] = np.clip(canvas, 0, 255).astype("uint8")
        all_boxes.append(np.asarray(boxes, "float32").reshape(-1, 4))
        all_labels.append(np.asarray(labels, "int32"))
    return {
        "images": images,
        "boxes": all_boxes,
        "labels": all_labels,
        "masks": masks,
        "instances": instances,
    }


def instance_masks(scenes, index):
    """Scene `index`'s per-digit masks: (k, H, W) bool, in the order of its boxes."""
    count = len(scenes["boxes"][index])
    ids = scenes["instances"][index]
    return ids[None] == np.arange(1, count + 1, dtype=ids.dtype)[:, None, None]


def pad_boxes(boxes, labels, max_boxes=None):
    """Ragged per-scene boxes/labels -> dense arrays padded with label -1.

    Returns `{"boxes": (N, M, 4) float32, "labels": (N, M) int32}`, the
    target layout of keras-hub's `RetinaNetObjectDetector`.
    """
    most = max((len(b) for b in boxes), default=0)
    max_boxes = most if max_boxes is None else int(max_boxes)
    if max_boxes < most:
        raise ValueError(
            f"A scene has {most} boxes, more than max_boxes. Received: max_boxes={max_boxes}"
        )
    out_boxes = np.zeros((len(boxes), max_boxes, 4), "float32")
    out_labels = np.full((len(boxes), max_boxes), -1, "int32")
    for i, (b, lab) in enumerate(zip(boxes, labels)):
        out_boxes[i, : len(b)] = b
        out_labels[i, : len(lab)] = lab
    return {"boxes": out_boxes, "labels": out_labels}
