"""RoIAlign on one map or a feature pyramid, and pasting RoI masks into images.

Mask R-CNN's region features (He et al. 2017, https://arxiv.org/abs/1703.06870)
as torchvision's `roi_align` and mmdet's `RoIAlign` / `_do_paste_mask`
compute them, written with `keras.ops` (every backend, static shapes):

- `roi_align`: torchvision's `roi_align(features, rois, output_size,
  spatial_scale, sampling_ratio, aligned)` on channels-last maps; boxes are
  (K, 4) xyxy with a (K,) index of the map each one reads. `aligned=True`
  shifts the box by -0.5 pixel (pixel centres at half-integers, the Detectron2
  / mmdet default). `sampling_ratio` must be a fixed int >= 1: torchvision's
  adaptive 0 (ceil(roi size / output size) samples per bin) has a
  data-dependent shape.
- `multilevel_roi_align`: mmdet's `SingleRoIExtractor` on P2..P5: each RoI
  is read from one level, `floor(log2(sqrt(w h) / finest_scale + 1e-6))`
  clipped to the levels (`map_roi_levels`), with one gather over the
  flattened pyramid (no per-level subsets, so shapes stay static).
- `paste_masks`: mmdet's `_do_paste_mask` (`F.grid_sample`,
  `align_corners=False`, zeros outside the mask) as two small interpolation
  matrices per box, then the 0.5 threshold: a mask of ones pastes exactly the
  pixels whose centres lie in the box.
"""

from keras import ops

FINEST_SCALE = 56  # mmdet's SingleRoIExtractor


def _axis_samples(start, length, bins, sampling_ratio):
    """(K,) box starts and lengths -> (K, bins * sampling_ratio) sample positions.

    Bin i's samples sit at start + (i + (j + 0.5) / s) * length / bins,
    j = 0..s-1 (torchvision's `roi_align` grid).
    """
    offsets = [
        (i + (j + 0.5) / sampling_ratio) / bins for i in range(bins) for j in range(sampling_ratio)
    ]
    offsets = ops.convert_to_tensor(offsets, dtype="float32")[None, :]  # (1, bins * s)
    return start[:, None] + offsets * length[:, None]  # (K, bins * s)


def _axis_weights(position, size):
    """torchvision's `bilinear_interpolate` along one axis.

    `position` (K, n) in pixels, `size` (K,) the map's extent -> the lower and
    upper pixel indices (int32) and their weights (K, n); positions beyond
    [-1, size] get weight 0.
    """
    size = size[:, None]
    inside = ops.cast(ops.logical_and(position >= -1.0, position <= size), "float32")
    position = ops.maximum(position, 0.0)
    low = ops.floor(position)
    at_edge = low >= size - 1.0
    low = ops.where(at_edge, size - 1.0, low)
    high = ops.where(at_edge, size - 1.0, low + 1.0)
    position = ops.where(at_edge, low, position)
    fraction = position - low
    return (
        ops.cast(low, "int32"),
        ops.cast(high, "int32"),
        (1.0 - fraction) * inside,
        fraction * inside,
    )


def _roi_sample(flat, base, height, width, boxes, output_size, sampling_ratio, aligned):
    """The RoIAlign core over a flattened map.

    Args:
        flat: (N_pixels, C) every map's pixels, row-major, one after another.
        base: (K,) int32. Index in `flat` of each RoI's map's pixel (0, 0).
        height, width: (K,) float32. Each RoI's map size.
        boxes: (K, 4) float32 xyxy in that map's pixels (already scaled).
        output_size: (rows, columns).
        sampling_ratio: int >= 1. Samples per bin along each axis.
        aligned: bool. Shift boxes by -0.5 pixel (torchvision's `aligned`).

    Returns:
        (K, rows, columns, C) float32.
    """
    rows, columns = output_size
    s = sampling_ratio
    shift = 0.5 if aligned else 0.0
    x1, y1 = boxes[:, 0] - shift, boxes[:, 1] - shift
    box_w, box_h = boxes[:, 2] - shift - x1, boxes[:, 3] - shift - y1
    if not aligned:  # torchvision forces malformed RoIs to 1x1 in the legacy mode
        box_w, box_h = ops.maximum(box_w, 1.0), ops.maximum(box_h, 1.0)
    y_low, y_high, wy_low, wy_high = _axis_weights(_axis_samples(y1, box_h, rows, s), height)
    x_low, x_high, wx_low, wx_high = _axis_weights(_axis_samples(x1, box_w, columns, s), width)
    row_stride = ops.cast(width, "int32")[:, None, None]
    base = ops.cast(base, "int32")[:, None, None]
    total = None
    for ys, wy in ((y_low, wy_low), (y_high, wy_high)):
        for xs, wx in ((x_low, wx_low), (x_high, wx_high)):
            index = base + ys[:, :, None] * row_stride + xs[:, None, :]  # (K, rows * s, cols * s)
            values = ops.cast(ops.take(flat, index, axis=0), "float32")  # (K, rows*s, cols*s, C)
            term = values * (wy[:, :, None] * wx[:, None, :])[..., None]
            total = term if total is None else total + term
    channels = ops.shape(flat)[-1]
    k = ops.shape(boxes)[0]
    total = ops.reshape(total, (k, rows, s, columns * s, channels))  # (K, rows, s, cols * s, C)
    total = ops.mean(total, axis=2)  # (K, rows, cols * s, C)
    total = ops.reshape(total, (k, rows, columns, s, channels))  # (K, rows, cols, s, C)
    return ops.mean(total, axis=3)  # (K, rows, cols, C)


def _check_sampling(sampling_ratio):
    if (
        isinstance(sampling_ratio, bool)
        or not isinstance(sampling_ratio, int)
        or sampling_ratio < 1
    ):
        raise ValueError(
            "`sampling_ratio` must be an int >= 1 (torchvision's adaptive 0 has a data-dependent "
            f"shape). Received: sampling_ratio={sampling_ratio!r}"
        )


def _pair(output_size):
    if isinstance(output_size, int):
        return output_size, output_size
    return tuple(int(s) for s in output_size)


def roi_align(
    features, boxes, box_indices, output_size, spatial_scale=1.0, sampling_ratio=2, aligned=True
):
    """torchvision's `roi_align` on channels-last maps.

    Args:
        features: (N, H, W, C) maps.
        boxes: (K, 4) xyxy boxes in input pixels (`spatial_scale` maps them
            onto the features).
        box_indices: (K,) int. Which of the N maps each box reads.
        output_size: int or (rows, columns).
        spatial_scale: float. Feature pixels per input pixel (1 / stride).
        sampling_ratio: int >= 1. Samples per bin along each axis. Defaults to 2.
        aligned: bool. Pixel-centre alignment (-0.5 shift). Defaults to True.

    Returns:
        (K, rows, columns, C) float32.
    """
    _check_sampling(sampling_ratio)
    count, height, width, channels = ops.shape(features)
    flat = ops.reshape(features, (-1, channels))  # (N * H * W, C)
    boxes = ops.cast(boxes, "float32") * spatial_scale
    base = ops.cast(box_indices, "int32") * (height * width)
    ones = ops.ones_like(boxes[:, 0])
    return _roi_sample(
        flat,
        base,
        ones * ops.cast(height, "float32"),
        ones * ops.cast(width, "float32"),
        boxes,
        _pair(output_size),
        sampling_ratio,
        aligned,
    )


def map_roi_levels(boxes, num_levels, finest_scale=FINEST_SCALE):
    """mmdet's `map_roi_levels`: (..., 4) xyxy -> (...,) int32 level index 0..num_levels-1.

    `floor(log2(sqrt(w h) / finest_scale + 1e-6))` clipped: boxes under 112
    px (for 56) read P2, 112-224 px P3, 224-448 px P4, larger P5.
    """
    boxes = ops.cast(boxes, "float32")
    scale = ops.sqrt(
        ops.maximum((boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1]), 0.0)
    )
    level = ops.floor(ops.log2(scale / finest_scale + 1e-6))
    return ops.cast(ops.clip(level, 0, num_levels - 1), "int32")


def multilevel_roi_align(
    pyramid, boxes, output_size, strides, sampling_ratio=2, finest_scale=FINEST_SCALE
):
    """mmdet's `SingleRoIExtractor` (RoIAlign, aligned=True) over a feature pyramid.

    Args:
        pyramid: list of (B, H_l, W_l, C) maps, finest first (P2..P5).
        boxes: (B, R, 4) xyxy boxes in input pixels.
        output_size: int or (rows, columns). 7 for boxes, 14 for masks.
        strides: list of int. Each map's stride (4, 8, 16, 32).
        sampling_ratio: int >= 1. Defaults to 2.
        finest_scale: float. Scale of the finest level's RoIs. Defaults to 56.

    Returns:
        (B, R, rows, columns, C) float32.
    """
    _check_sampling(sampling_ratio)
    if len(pyramid) != len(strides):
        raise ValueError(
            f"`pyramid` and `strides` must have one entry per level. Received: {len(pyramid)} "
            f"maps and strides={strides}"
        )
    batch, count = ops.shape(boxes)[0], ops.shape(boxes)[1]
    flats, sizes, offsets, offset = [], [], [], 0
    for level in pyramid:
        _, height, width, channels = ops.shape(level)
        flats.append(ops.reshape(level, (-1, channels)))  # (B * H_l * W_l, C)
        sizes.append((height, width))
        offsets.append(offset)
        offset = offset + batch * height * width
    flat = ops.concatenate(flats, axis=0)  # (sum_l B * H_l * W_l, C)
    level = ops.reshape(map_roi_levels(boxes, len(pyramid), finest_scale), (-1,))  # (B * R,)
    heights = ops.cast(ops.stack([h for h, _ in sizes]), "float32")
    widths = ops.cast(ops.stack([w for _, w in sizes]), "float32")
    starts = ops.cast(ops.stack(offsets), "int32")
    scales = ops.convert_to_tensor([1.0 / s for s in strides], dtype="float32")
    height, width = ops.take(heights, level), ops.take(widths, level)
    image = ops.repeat(ops.arange(batch, dtype="int32"), count)  # (B * R,)
    base = ops.take(starts, level) + image * ops.cast(height * width, "int32")
    flat_boxes = ops.reshape(ops.cast(boxes, "float32"), (-1, 4))  # (B * R, 4)
    flat_boxes = flat_boxes * ops.take(scales, level)[:, None]
    rows, columns = _pair(output_size)
    values = _roi_sample(
        flat, base, height, width, flat_boxes, (rows, columns), sampling_ratio, True
    )  # (B * R, rows, cols, C)
    return ops.reshape(values, (batch, count, rows, columns, ops.shape(flat)[-1]))


def _paste_weights(start, end, size, mask_size):
    """(B, K) box sides -> (B, K, size, mask_size) bilinear weights, zeros outside the mask."""
    centres = ops.cast(ops.arange(size), "float32") + 0.5  # (size,)
    extent = ops.maximum(end - start, 1e-6)[..., None]
    position = (centres - start[..., None]) / extent * mask_size - 0.5  # (B, K, size)
    low = ops.floor(position)
    fraction = (position - low)[..., None]
    cells = ops.cast(ops.arange(mask_size), "float32")  # (m,)
    low = low[..., None]
    return (1.0 - fraction) * ops.cast(ops.equal(cells, low), "float32") + fraction * ops.cast(
        ops.equal(cells, low + 1.0), "float32"
    )  # (B, K, size, m)


def paste_masks(masks, boxes, image_size, threshold=0.5):
    """mmdet's `_do_paste_mask`: RoI masks -> image-sized binary masks.

    Args:
        masks: (B, K, m, m) mask probabilities (28x28 in Mask R-CNN).
        boxes: (B, K, 4) xyxy boxes in image pixels.
        image_size: (height, width) of the output.
        threshold: float or None. Masks are `probability >= threshold`
            (uint8); None returns the probabilities. Defaults to 0.5.

    Returns:
        (B, K, height, width) uint8 (or float32 with `threshold=None`).
    """
    height, width = (int(s) for s in image_size)
    mask_rows, mask_columns = masks.shape[-2], masks.shape[-1]
    boxes = ops.cast(boxes, "float32")
    rows = _paste_weights(boxes[..., 1], boxes[..., 3], height, mask_rows)  # (B, K, H, m)
    columns = _paste_weights(boxes[..., 0], boxes[..., 2], width, mask_columns)  # (B, K, W, m)
    x = ops.einsum("bkym,bkmn->bkyn", rows, ops.cast(masks, "float32"))  # (B, K, H, m)
    x = ops.einsum("bkyn,bkxn->bkyx", x, columns)  # (B, K, H, W)
    if threshold is None:
        return x
    return ops.cast(x >= threshold, "uint8")
