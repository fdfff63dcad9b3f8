"""COCO box mAP with pycocotools: ground truth and detections -> `COCOeval`.

No metric is computed here: boxes are converted to COCO's layout (top-left
x, y, width, height in pixels), handed to `pycocotools.coco.COCO` in memory
(no file written) and `pycocotools.cocoeval.COCOeval` computes the twelve
standard numbers. `map` is AP@[.50:.95], `map50` AP@.50.

Example:

```python
from keras_sepvit.tasks.coco_eval import evaluate_detections

metrics = evaluate_detections(
    gt_boxes=[[[10, 10, 30, 40]]], gt_labels=[[3]],
    pred_boxes=[[[11, 10, 30, 41]]], pred_scores=[[0.9]], pred_labels=[[3]],
    image_sizes=[(64, 64)],
)
metrics["map50"]  # 1.0
```
"""

import contextlib
import io

import numpy as np

# The order of COCOeval.stats.
STAT_NAMES = (
    "map", "map50", "map75", "map_small", "map_medium", "map_large",
    "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large",
)  # fmt: skip
BOX_FORMATS = ("xyxy", "yxyx", "xywh")


def _pycocotools():
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as err:  # pragma: no cover - the [hub] extra installs it
        raise ImportError(
            "COCO evaluation needs pycocotools: pip install keras-sepvit[hub]"
        ) from err
    return COCO, COCOeval


def to_coco_xywh(boxes, box_format="xyxy"):
    """(N, 4) boxes in `box_format` (pixels) -> COCO's (N, 4) x, y, width, height."""
    if box_format not in BOX_FORMATS:
        raise ValueError(
            f"`box_format` must be one of {BOX_FORMATS}. Received: box_format={box_format!r}"
        )
    boxes = np.asarray(boxes, "float64").reshape(-1, 4)
    if box_format == "xywh":
        return boxes
    if box_format == "yxyx":
        boxes = boxes[:, [1, 0, 3, 2]]
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def _image_ids(image_ids, count):
    if image_ids is None:
        return list(range(1, count + 1))
    image_ids = [int(i) for i in image_ids]
    if len(image_ids) != count:
        raise ValueError(
            f"`image_ids` must have one id per image ({count}). Received: "
            f"{len(image_ids)} image_ids"
        )
    return image_ids


def coco_ground_truth(
    boxes,
    labels,
    image_sizes,
    image_ids=None,
    box_format="xyxy",
    iscrowd=None,
    areas=None,
    categories=None,
):
    """An in-memory `pycocotools.coco.COCO` of ground-truth boxes.

    Args:
        boxes: per image, an (n_i, 4) array of boxes in pixels. Boxes whose
            label is negative (padding, as `digit_scenes.pad_boxes` writes)
            are skipped.
        labels: per image, (n_i,) category ids.
        image_sizes: per image, (height, width).
        image_ids: per image, an int id. Defaults to 1..N.
        box_format: "xyxy" (default), "yxyx" or "xywh".
        iscrowd: per image, (n_i,) 0/1 crowd flags (crowd boxes are matched
            but never counted as missed). Defaults to none crowded.
        areas: per image, (n_i,) object areas for the small/medium/large
            split (COCO uses the mask area). Defaults to the box areas.
        categories: ids of all categories (those without any box still count
            when detected). Defaults to the ids found in `labels`.
    """
    COCO, _ = _pycocotools()
    if not len(boxes) == len(labels) == len(image_sizes):
        raise ValueError(
            "`boxes`, `labels` and `image_sizes` must have one entry per image. Received: "
            f"{len(boxes)} boxes, {len(labels)} labels, {len(image_sizes)} image_sizes"
        )
    image_ids = _image_ids(image_ids, len(boxes))
    images, annotations, found = [], [], set()
    for n, image_id in enumerate(image_ids):
        height, width = (int(s) for s in image_sizes[n][:2])
        images.append({"id": image_id, "height": height, "width": width})
        label = np.asarray(labels[n]).reshape(-1).astype("int64")
        xywh = to_coco_xywh(boxes[n], box_format)
        if len(xywh) != len(label):
            raise ValueError(
                f"Image {n} has {len(xywh)} boxes and {len(label)} labels. Received: "
                f"boxes[{n}] of shape {np.shape(boxes[n])}"
            )
        crowd = np.zeros(len(label), "int64") if iscrowd is None else np.asarray(iscrowd[n])
        area = xywh[:, 2] * xywh[:, 3] if areas is None else np.asarray(areas[n], "float64")
        for k in np.flatnonzero(label >= 0):
            found.add(int(label[k]))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(label[k]),
                    "bbox": [float(v) for v in xywh[k]],
                    "area": float(area[k]),
                    "iscrowd": int(crowd[k]),
                }
            )
    ids = sorted(found if categories is None else {int(c) for c in categories})
    dataset = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c, "name": str(c)} for c in ids],
    }
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def coco_results(boxes, scores, labels, image_ids=None, box_format="xyxy"):
    """Detections -> COCO's result list (`[{"image_id", "category_id", "bbox", "score"}]`).

    Args:
        boxes: per image, (m_i, 4) boxes in pixels.
        scores: per image, (m_i,) confidences.
        labels: per image, (m_i,) category ids; entries with a negative
            label (keras-hub's padding of `predict` outputs) are skipped.
        image_ids: per image, its id. Defaults to 1..N.
        box_format: "xyxy" (default), "yxyx" or "xywh".
    """
    if not len(boxes) == len(scores) == len(labels):
        raise ValueError(
            "`boxes`, `scores` and `labels` must have one entry per image. Received: "
            f"{len(boxes)} boxes, {len(scores)} scores, {len(labels)} labels"
        )
    image_ids = _image_ids(image_ids, len(boxes))
    results = []
    for n, image_id in enumerate(image_ids):
        label = np.asarray(labels[n]).reshape(-1).astype("int64")
        score = np.asarray(scores[n], "float64").reshape(-1)
        xywh = to_coco_xywh(boxes[n], box_format)
        for k in np.flatnonzero(label >= 0):
            results.append(
                {
                    "image_id": image_id,
                    "category_id": int(label[k]),
                    "bbox": [float(v) for v in xywh[k]],
                    "score": float(score[k]),
                }
            )
    return results


def coco_evaluate(coco_gt, results, verbose=False):
    """Runs `COCOeval` (bbox) on an in-memory ground truth and a result list.

    Returns a dict of the twelve COCO numbers (`STAT_NAMES`: "map" is
    AP@[.50:.95], "map50" AP@.50, ...); with no detection every number is 0.
    `verbose=True` prints pycocotools' summary table.
    """
    COCO, COCOeval = _pycocotools()
    if not results:
        return dict.fromkeys(STAT_NAMES, 0.0)
    known = set(coco_gt.getImgIds())
    unknown = sorted({r["image_id"] for r in results} - known)
    if unknown:
        raise ValueError(
            f"Detections name images the ground truth does not have. Received: image ids "
            f"{unknown[:10]}"
        )
    output = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with output:
        detections = coco_gt.loadRes(results)
        evaluation = COCOeval(coco_gt, detections, "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    # -1 means "no ground truth in this area range": report it as 0.
    return {name: max(float(v), 0.0) for name, v in zip(STAT_NAMES, evaluation.stats)}


def evaluate_detections(
    gt_boxes,
    gt_labels,
    pred_boxes,
    pred_scores,
    pred_labels,
    image_sizes,
    box_format="xyxy",
    categories=None,
    verbose=False,
):
    """COCO mAP of detections against ground truth, both given per image.

    The arrays may be padded (keras-hub's `predict` pads with label -1,
    `digit_scenes.pad_boxes` too): negative labels are skipped. Returns the
    dict of `coco_evaluate`.
    """
    coco_gt = coco_ground_truth(
        gt_boxes, gt_labels, image_sizes, box_format=box_format, categories=categories
    )
    results = coco_results(pred_boxes, pred_scores, pred_labels, box_format=box_format)
    return coco_evaluate(coco_gt, results, verbose=verbose)
