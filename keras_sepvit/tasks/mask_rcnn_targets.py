"""Mask R-CNN's anchors, box coding, proposals, target assignment and losses.

mmdetection's `mask-rcnn_r50_fpn_1x_coco` pieces, written with `keras.ops`
on padded, static shapes (every backend; a batch is (B, N, ...) with
validity masks instead of per-image lists):

- `level_anchors`: mmdet's `AnchorGenerator` (base size = stride, scale 8,
  ratios 0.5 / 1 / 2, centres at (x, y) * stride, ratio-major per place).
- `encode_boxes` / `decode_boxes`: `DeltaXYWHBBoxCoder` (means 0; stds 1 for
  the RPN, 0.1 / 0.1 / 0.2 / 0.2 for the box head; dw, dh clamped at
  |log(16 / 1000)|; decoded boxes clipped to the image).
- `box_iou`, `assign_boxes`: `MaxIoUAssigner` (positives at IoU >=
  `positive_iou`, negatives below `negative_iou`, and with
  `min_positive_iou` every gt's best-overlapping boxes positive, ties
  included: `gt_max_assign_all`).
- `sample_boxes`: `RandomSampler` (`num` per image, at most
  `num * positive_fraction` positives, negatives fill the rest), driven by
  noise drawn by the caller so the model's seed controls it.
- `propose`: RPN proposals (`RPNHead._bbox_post_process`: top-k per level,
  decode, NMS per level at 0.7, the best `post_nms_topk` overall).
- `non_max_suppression`: greedy NMS (torchvision's `nms`) with a static
  output size, in a `keras.ops.while_loop` (`greedy_nms`); `batched_nms`:
  within classes or levels by mmcv's coordinate offsets. keras-hub's tiled
  NMS is not used: traced in a TensorFlow graph (`predict`, `fit`) it kept
  other boxes than it did eagerly (22 to 34 of 40 detections in common on a
  test model; the loop agrees on all 40).
- losses: sigmoid / softmax cross-entropy and L1 averaged as mmdet does
  (over the sampled boxes of the whole batch).
"""

import math

from keras import ops

from keras_sepvit.tasks.roi_align import roi_align

STRIDES = (4, 8, 16, 32, 64)
ASPECT_RATIOS = (0.5, 1.0, 2.0)
ANCHOR_SCALE = 8
RPN_STDS = (1.0, 1.0, 1.0, 1.0)
BOX_STDS = (0.1, 0.1, 0.2, 0.2)
MAX_RATIO = abs(math.log(16 / 1000))  # DeltaXYWHBBoxCoder's wh_ratio_clip


def base_anchors(stride, scale=ANCHOR_SCALE, aspect_ratios=ASPECT_RATIOS):
    """(A, 4) xyxy anchors centred at (0, 0): side `stride * scale`, h / w = ratio.

    mmdet's `AnchorGenerator.gen_single_level_base_anchors` (center_offset 0).
    """
    anchors = []
    for ratio in aspect_ratios:
        h_ratio = math.sqrt(ratio)
        w, h = stride * scale / h_ratio, stride * scale * h_ratio
        anchors.append([-0.5 * w, -0.5 * h, 0.5 * w, 0.5 * h])
    return anchors


def level_anchors(height, width, stride, scale=ANCHOR_SCALE, aspect_ratios=ASPECT_RATIOS):
    """(height * width * A, 4) xyxy anchors of one level, row-major, anchors innermost.

    The order of an RPN output of shape (B, height, width, A) reshaped to
    (B, height * width * A).
    """
    base = ops.convert_to_tensor(base_anchors(stride, scale, aspect_ratios), "float32")
    ys = ops.cast(ops.arange(height), "float32") * stride
    xs = ops.cast(ops.arange(width), "float32") * stride
    grid_y, grid_x = ops.meshgrid(ys, xs, indexing="ij")  # (h, w) each
    shifts = ops.stack([grid_x, grid_y, grid_x, grid_y], axis=-1)  # (h, w, 4)
    shifts = ops.reshape(shifts, (-1, 1, 4))  # (h * w, 1, 4)
    return ops.reshape(shifts + base[None], (-1, 4))  # (h * w * A, 4)


def encode_boxes(boxes, anchors, stds):
    """`DeltaXYWHBBoxCoder.encode`: (..., 4) xyxy targets vs. anchors -> deltas / stds."""
    pw = anchors[..., 2] - anchors[..., 0]
    ph = anchors[..., 3] - anchors[..., 1]
    px = anchors[..., 0] + 0.5 * pw
    py = anchors[..., 1] + 0.5 * ph
    gw = ops.maximum(boxes[..., 2] - boxes[..., 0], 1e-6)
    gh = ops.maximum(boxes[..., 3] - boxes[..., 1], 1e-6)
    gx = boxes[..., 0] + 0.5 * gw
    gy = boxes[..., 1] + 0.5 * gh
    pw, ph = ops.maximum(pw, 1e-6), ops.maximum(ph, 1e-6)
    deltas = ops.stack(
        [(gx - px) / pw, (gy - py) / ph, ops.log(gw / pw), ops.log(gh / ph)], axis=-1
    )
    return deltas / ops.convert_to_tensor(stds, "float32")


def decode_boxes(deltas, anchors, stds, image_size=None):
    """`DeltaXYWHBBoxCoder.decode`: deltas (..., 4) on anchors -> xyxy, clipped to `image_size`."""
    deltas = ops.cast(deltas, "float32") * ops.convert_to_tensor(stds, "float32")
    pw = anchors[..., 2] - anchors[..., 0]
    ph = anchors[..., 3] - anchors[..., 1]
    px = anchors[..., 0] + 0.5 * pw
    py = anchors[..., 1] + 0.5 * ph
    dw = ops.clip(deltas[..., 2], -MAX_RATIO, MAX_RATIO)
    dh = ops.clip(deltas[..., 3], -MAX_RATIO, MAX_RATIO)
    gw, gh = pw * ops.exp(dw), ph * ops.exp(dh)
    gx, gy = px + pw * deltas[..., 0], py + ph * deltas[..., 1]
    x1, y1, x2, y2 = gx - 0.5 * gw, gy - 0.5 * gh, gx + 0.5 * gw, gy + 0.5 * gh
    if image_size is not None:
        height, width = (float(s) for s in image_size)
        x1, x2 = ops.clip(x1, 0.0, width), ops.clip(x2, 0.0, width)
        y1, y2 = ops.clip(y1, 0.0, height), ops.clip(y2, 0.0, height)
    return ops.stack([x1, y1, x2, y2], axis=-1)


def box_iou(boxes, gt_boxes, gt_valid):
    """(B, N, 4) x (B, M, 4) -> (B, N, M) IoU; 0 for invalid gts (`gt_valid` (B, M))."""
    a = boxes[:, :, None, :]  # (B, N, 1, 4)
    b = gt_boxes[:, None, :, :]  # (B, 1, M, 4)
    w = ops.maximum(ops.minimum(a[..., 2], b[..., 2]) - ops.maximum(a[..., 0], b[..., 0]), 0.0)
    h = ops.maximum(ops.minimum(a[..., 3], b[..., 3]) - ops.maximum(a[..., 1], b[..., 1]), 0.0)
    inter = w * h
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    iou = inter / ops.maximum(area_a + area_b - inter, 1e-6)
    return iou * ops.cast(gt_valid, iou.dtype)[:, None, :]


def assign_boxes(iou, gt_valid, positive_iou, negative_iou, min_positive_iou, candidate_valid=None):
    """mmdet's `MaxIoUAssigner` (`gt_max_assign_all=True`) on (B, N, M) IoUs.

    Returns:
        state: (B, N) int32: 1 positive, 0 negative, -1 ignored.
        matched: (B, N) int32: index of the gt of each positive.
    """
    gt_valid = ops.cast(gt_valid, "bool")
    best = ops.max(iou, axis=2)  # (B, N)
    matched = ops.cast(ops.argmax(iou, axis=2), "int32")
    state = ops.where(best >= positive_iou, 1, ops.where(best < negative_iou, 0, -1))
    if min_positive_iou is not None:
        gt_best = ops.max(iou, axis=1, keepdims=True)  # (B, 1, M)
        # every gt's best boxes (ties too) are positive, if that IoU is >= min_positive_iou
        hit = ops.logical_and(ops.equal(iou, gt_best), gt_best >= min_positive_iou)
        hit = ops.logical_and(hit, gt_valid[:, None, :])  # (B, N, M)
        count = ops.shape(iou)[2]
        ranks = ops.cast(ops.arange(1, count + 1), "int32")[None, None, :]
        last = ops.max(ops.cast(hit, "int32") * ranks, axis=2)  # later gts win, as mmdet's loop
        matched = ops.where(last > 0, last - 1, matched)
        state = ops.where(last > 0, 1, state)
    if candidate_valid is not None:
        state = ops.where(ops.cast(candidate_valid, "bool"), state, -1)
    return ops.cast(state, "int32"), matched


def _top_threshold(key, k):
    """Per row, the k-th largest value of `key` (B, N); -1 where k exceeds N's positives."""
    k = min(int(k), key.shape[1])
    return ops.top_k(key, k, sorted=True)[0]  # (B, k)


def sample_boxes(state, noise, num, positive_fraction):
    """mmdet's `RandomSampler`: (B, N) states and uniform [0, 1) noise -> chosen masks.

    At most `int(num * positive_fraction)` positives, then negatives up to
    `num` in all; which ones is decided by `noise` (the larger, the first).

    Returns:
        positive, negative: (B, N) bool.
    """
    max_positive = int(num * positive_fraction)
    positive = ops.equal(state, 1)
    negative = ops.equal(state, 0)
    sampled_positive = ops.zeros_like(positive)
    if max_positive > 0:
        key = ops.where(positive, noise, -1.0)
        kth = _top_threshold(key, max_positive)[:, -1:]
        sampled_positive = ops.logical_and(positive, key >= kth)
    quota = num - ops.sum(ops.cast(sampled_positive, "int32"), axis=1, keepdims=True)  # (B, 1)
    key = ops.where(negative, noise, -1.0)
    values = _top_threshold(key, num)  # (B, num')
    index = ops.clip(quota - 1, 0, values.shape[1] - 1)
    kth = ops.take_along_axis(values, index, axis=1)  # (B, 1)
    sampled_negative = ops.logical_and(ops.logical_and(negative, key >= kth), quota > 0)
    return sampled_positive, sampled_negative


def _iou_one(box, boxes):
    """(B, 4) x (B, N, 4) -> (B, N) IoU."""
    box = box[:, None, :]
    w = ops.maximum(
        ops.minimum(box[..., 2], boxes[..., 2]) - ops.maximum(box[..., 0], boxes[..., 0]), 0.0
    )
    h = ops.maximum(
        ops.minimum(box[..., 3], boxes[..., 3]) - ops.maximum(box[..., 1], boxes[..., 1]), 0.0
    )
    inter = w * h
    area = (box[..., 2] - box[..., 0]) * (box[..., 3] - box[..., 1])
    areas = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    return inter / ops.maximum(area + areas - inter, 1e-9)


def non_max_suppression(boxes, scores, max_output, iou_threshold):
    """Greedy NMS (torchvision's `nms`), batched, with a static output size.

    `greedy_nms`, the same in eager and traced code on every backend (see
    the module docstring for why not keras-hub's tiled version).

    Args:
        boxes: (B, N, 4) xyxy.
        scores: (B, N); boxes with scores <= 0 are never kept.
        max_output: int.
        iou_threshold: float.

    Returns:
        index: (B, K) int32 into N, best first, K = min(max_output, N);
        valid: (B, K) bool.
    """
    return greedy_nms(boxes, scores, max_output, iou_threshold)


def greedy_nms(boxes, scores, max_output, iou_threshold):
    """Greedy NMS in a `keras.ops.while_loop`, any batch size.

    Each step keeps the best remaining box of every image and removes the
    boxes overlapping it by more than `iou_threshold`; it stops after
    `max_output` steps or when no box with a score > 0 remains.

    Args:
        boxes: (B, N, 4) xyxy.
        scores: (B, N); boxes with scores <= 0 are never kept.
        max_output: int.
        iou_threshold: float.

    Returns:
        index: (B, K) int32 into N, best first, K = min(max_output, N);
        valid: (B, K) bool.
    """
    boxes = ops.stop_gradient(ops.cast(boxes, "float32"))
    scores = ops.stop_gradient(ops.cast(scores, "float32"))
    count = min(int(max_output), boxes.shape[1])
    slots = ops.arange(count, dtype="int32")[None, :]  # (1, K)
    positions = ops.arange(boxes.shape[1], dtype="int32")[None, :]  # (1, N)

    def condition(step, remaining, index, valid):
        return ops.logical_and(step < count, ops.any(remaining > 0.0))

    def body(step, remaining, index, valid):
        # top_k, not argmax: the same first best index, and TensorFlow's argmax
        # brings a BitwiseAnd (its -0.0 fix) that TFLite has no builtin for
        score, best = ops.top_k(remaining, 1)  # (B, 1) each
        score, best = score[:, 0], ops.cast(best[:, 0], "int32")  # (B,)
        box = ops.take_along_axis(boxes, best[:, None, None], axis=1)[:, 0]  # (B, 4)
        suppressed = ops.logical_or(
            _iou_one(box, boxes) > iou_threshold, ops.equal(positions, best[:, None])
        )
        remaining = ops.where(suppressed, -1.0, remaining)
        here = ops.equal(slots, step)
        index = ops.where(here, best[:, None], index)
        valid = ops.logical_or(valid, ops.logical_and(here, (score > 0.0)[:, None]))
        return step + 1, remaining, index, valid

    index = ops.zeros_like(ops.cast(scores[:, :count], "int32"))
    valid = ops.zeros_like(index) > 0
    _, _, index, valid = ops.while_loop(
        condition, body, (ops.convert_to_tensor(0, "int32"), scores, index, valid)
    )
    return index, valid


def batched_nms(boxes, scores, groups, max_output, iou_threshold, image_size):
    """NMS within each group (class or level) by mmcv's coordinate-offset trick.

    Args:
        boxes: (B, N, 4) xyxy inside the image.
        scores: (B, N); entries <= 0 are never kept.
        groups: (B, N) or (N,) int group ids.
        max_output: int. Boxes kept per image.
        iou_threshold: float.
        image_size: (height, width): boxes of different groups are moved
            `(group + 1) * (max(height, width) + 1)` apart (all coordinates > 0).

    Returns:
        index: (B, K) int32 into N, sorted by score; valid: (B, K) bool;
        K = min(max_output, N).
    """
    offset = float(max(image_size) + 1)
    groups = ops.cast(groups, "float32")
    if len(groups.shape) == 1:
        groups = groups[None, :]
    shifted = ops.cast(boxes, "float32") + ((groups + 1.0) * offset)[..., None]
    return non_max_suppression(shifted, scores, max_output, iou_threshold)


def _take_rows(x, index):
    """x (B, N, ...) gathered by index (B, K) along axis 1."""
    for _ in range(len(x.shape) - 2):
        index = index[..., None]
    return ops.take_along_axis(x, index, axis=1)


def propose(logits, deltas, anchors, level_sizes, image_size, pre_nms_topk, post_nms_topk, iou):
    """RPN outputs -> (B, post_nms_topk, 4) proposals and their (B, post_nms_topk) validity.

    mmdet's `RPNHead`: per level the `pre_nms_topk` best anchors (sigmoid
    scores), their boxes decoded (stds 1, clipped), NMS at `iou` within each
    level, then the best `post_nms_topk` of all levels. Proposals carry no
    gradient.

    Args:
        logits: (B, A_total) objectness logits, levels one after another.
        deltas: (B, A_total, 4).
        anchors: (A_total, 4).
        level_sizes: list of int, anchors per level.
        image_size: (height, width).
    """
    logits = ops.stop_gradient(ops.cast(logits, "float32"))
    deltas = ops.stop_gradient(ops.cast(deltas, "float32"))
    boxes, scores, levels, start = [], [], [], 0
    for n, size in enumerate(level_sizes):
        part = slice(start, start + size)
        k = min(int(pre_nms_topk), size)
        top, index = ops.top_k(logits[:, part], k)  # (B, k)
        level_deltas = _take_rows(deltas[:, part], index)  # (B, k, 4)
        level_anchors_ = ops.take(anchors[part], index, axis=0)  # (B, k, 4)
        boxes.append(decode_boxes(level_deltas, level_anchors_, RPN_STDS, image_size))
        scores.append(ops.sigmoid(top))
        levels += [n] * k
        start += size
    boxes = ops.concatenate(boxes, axis=1)  # (B, K, 4)
    scores = ops.concatenate(scores, axis=1)  # (B, K)
    index, valid = batched_nms(
        boxes, scores, ops.convert_to_tensor(levels, "int32"), post_nms_topk, iou, image_size
    )
    proposals = _take_rows(boxes, index) * ops.cast(valid, "float32")[..., None]
    return ops.stop_gradient(proposals), valid


def binary_cross_entropy(logits, targets):
    """Elementwise sigmoid cross-entropy from logits (stable)."""
    logits = ops.cast(logits, "float32")
    return ops.maximum(logits, 0.0) - logits * targets + ops.log1p(ops.exp(-ops.abs(logits)))


def rpn_losses(logits, deltas, anchors, gt_boxes, gt_valid, noise, settings):
    """The RPN's classification (sigmoid CE) and box (L1) losses, mmdet's averaging.

    `settings`: positive_iou, negative_iou, min_positive_iou, num,
    positive_fraction. Both losses are summed over the sampled anchors of the
    batch and divided by their count (mmdet's `num_total_samples`).
    """
    anchors_b = anchors[None] + ops.zeros_like(gt_boxes[:, :1, :])  # (B, A, 4)
    iou = box_iou(anchors_b, gt_boxes, gt_valid)  # (B, A, M)
    state, matched = assign_boxes(
        iou, gt_valid, settings["positive_iou"], settings["negative_iou"],
        settings["min_positive_iou"],
    )  # fmt: skip
    positive, negative = sample_boxes(state, noise, settings["num"], settings["positive_fraction"])
    positive_f = ops.cast(positive, "float32")
    sampled = positive_f + ops.cast(negative, "float32")
    total = ops.maximum(ops.sum(sampled), 1.0)
    cls = ops.sum(binary_cross_entropy(logits, positive_f) * sampled) / total
    targets = encode_boxes(_take_rows(gt_boxes, matched), anchors_b, RPN_STDS)  # (B, A, 4)
    l1 = ops.sum(ops.abs(ops.cast(deltas, "float32") - targets), axis=-1)
    return cls, ops.sum(l1 * positive_f) / total


def sample_rois(proposals, proposal_valid, gt_boxes, gt_labels, gt_valid, noise, settings):
    """mmdet's RoI assignment and sampling, gt boxes added to the proposals.

    Returns a dict of (B, S, ...) tensors, S = min(num, candidates), the
    sampled positives first: "rois" (S, 4) boxes, "valid", "positive",
    "labels" (gt class, `num_classes` = background for negatives),
    "matched" (gt index), "targets" (encoded with `BOX_STDS`).
    """
    rois = ops.concatenate([proposals, gt_boxes], axis=1)  # (B, P + M, 4)
    candidate_valid = ops.concatenate([proposal_valid, gt_valid], axis=1)
    iou = box_iou(rois, gt_boxes, gt_valid)
    state, matched = assign_boxes(
        iou, gt_valid, settings["positive_iou"], settings["negative_iou"],
        settings["min_positive_iou"], candidate_valid,
    )  # fmt: skip
    positive, negative = sample_boxes(state, noise, settings["num"], settings["positive_fraction"])
    priority = ops.where(positive, 2.0 + noise, ops.where(negative, 1.0 + noise, -1.0))
    count = min(int(settings["num"]), rois.shape[1])
    values, index = ops.top_k(priority, count)  # (B, S): positives, then negatives, then unused
    rois = _take_rows(rois, index)
    matched = _take_rows(matched, index)
    is_positive = values >= 2.0
    gt_for_roi = _take_rows(gt_boxes, matched)
    labels = ops.take_along_axis(ops.cast(gt_labels, "int32"), matched, axis=1)
    return {
        "rois": ops.stop_gradient(rois),
        "valid": values >= 0.0,
        "positive": is_positive,
        "labels": ops.where(is_positive, labels, settings["num_classes"]),
        "matched": matched,
        "targets": encode_boxes(gt_for_roi, rois, BOX_STDS),
    }


def box_head_losses(class_logits, box_deltas, samples, num_classes):
    """Softmax CE over the sampled RoIs and L1 on the positives' class-specific deltas.

    Args:
        class_logits: (B, S, num_classes + 1), background last (mmdet).
        box_deltas: (B, S, num_classes, 4).
        samples: `sample_rois`' dict.

    Both are divided by the number of sampled RoIs (mmdet's avg_factor).
    """
    valid = ops.cast(samples["valid"], "float32")
    total = ops.maximum(ops.sum(valid), 1.0)
    logits = ops.cast(class_logits, "float32")
    log_probs = logits - ops.logsumexp(logits, axis=-1, keepdims=True)
    labels = samples["labels"]
    picked = ops.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]
    cls = -ops.sum(picked * valid) / total
    positive = ops.cast(samples["positive"], "float32")
    gt_class = ops.clip(labels, 0, num_classes - 1)
    index = gt_class[..., None, None]  # (B, S, 1, 1)
    deltas = ops.take_along_axis(ops.cast(box_deltas, "float32"), index, axis=2)[:, :, 0]
    l1 = ops.sum(ops.abs(deltas - samples["targets"]), axis=-1)
    return cls, ops.sum(l1 * positive) / total


def mask_loss(mask_logits, mask_targets, labels, positive):
    """Per-pixel sigmoid CE on each positive RoI's gt-class channel, mean over pixels.

    Args:
        mask_logits: (B, Q, m, m, num_classes).
        mask_targets: (B, Q, m, m) 0/1.
        labels: (B, Q) gt classes; positive: (B, Q) bool.
    """
    num_classes = mask_logits.shape[-1]
    index = ops.clip(labels, 0, num_classes - 1)[..., None, None, None]  # (B, Q, 1, 1, 1)
    logits = ops.take_along_axis(ops.cast(mask_logits, "float32"), index, axis=-1)[..., 0]
    weight = ops.cast(positive, "float32")[..., None, None]
    pixels = mask_targets.shape[-1] * mask_targets.shape[-2]
    total = ops.maximum(ops.sum(weight) * pixels, 1.0)
    return ops.sum(binary_cross_entropy(logits, mask_targets) * weight) / total


def mask_targets(masks, rois, matched, size, sampling_ratio=2):
    """mmdet's `mask_target`: each RoI's gt mask RoIAligned to size x size, binarised.

    Args:
        masks: (B, M, H, W) 0/1 instance masks (uint8) at the input size.
        rois: (B, Q, 4) xyxy RoIs.
        matched: (B, Q) index of each RoI's gt.
        size: int. Target side (28).

    Returns:
        (B, Q, size, size) float32 0/1.
    """
    count, height, width = masks.shape[1], masks.shape[2], masks.shape[3]
    stack = ops.reshape(masks, (-1, height, width, 1))  # (B M, H, W, 1)
    image = ops.arange(ops.shape(rois)[0], dtype="int32")[:, None] * count  # (B, 1)
    indices = ops.reshape(image + ops.cast(matched, "int32"), (-1,))  # (B Q,)
    boxes = ops.reshape(ops.cast(rois, "float32"), (-1, 4))  # (B Q, 4)
    values = roi_align(stack, boxes, indices, size, 1.0, sampling_ratio)  # (B Q, s, s, 1)
    values = ops.reshape(values, (-1, rois.shape[1], size, size))  # (B, Q, s, s)
    return ops.cast(values >= 0.5, "float32")
