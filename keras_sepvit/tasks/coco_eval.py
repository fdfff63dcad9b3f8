"""COCO box mAP with pycocotools: ground truth and detections -> `COCOeval`.

No metric is computed here: boxes are converted to COCO's layout (top-left
x, y, width, height in pixels), handed to `pycocotools.coco.COCO` in memory
(no file written) and `pycocotools.cocoeval.COCOeval` computes the twelve
standard numbers. `map` is AP@[.50:.95], `map50` AP@.50. `evaluate_source` scores a detector
on a detection `Split` (`keras_sepvit.data.detection`) and `COCOEvaluation`
does it after every training epoch.

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

import keras
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


def _index(dataset):
    """A `pycocotools.coco.COCO` of an in-memory COCO dataset dict (quietly indexed)."""
    COCO, _ = _pycocotools()
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


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
    return _index(dataset)


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


def subset_ground_truth(coco, image_ids):
    """The ground truth of `image_ids` only (evaluating the first N images); `coco` if all."""
    if set(image_ids) == set(coco.getImgIds()):
        return coco
    keep = set(image_ids)
    return _index(
        {
            "images": [i for i in coco.dataset["images"] if i["id"] in keep],
            "annotations": [a for a in coco.dataset["annotations"] if a["image_id"] in keep],
            "categories": coco.dataset["categories"],
        }
    )


def evaluate_source(detector, source, examples, batch_size=8, verbose=False):
    """COCO box metrics of `detector` on a detection split.

    Args:
        detector: a keras-hub `RetinaNetObjectDetector` (run through
            `keras_sepvit.tasks.retinanet.detect`).
        source: the `keras_sepvit.data.Split` the examples come from: its
            `coco_gt` (a COCO-JSON folder's ground truth, else built from the
            examples), `category_ids` (labels -> the file's category ids) and
            `class_names`.
        examples: `keras_sepvit.data.detection.eval_dataset(source, ...)`:
            padded images, their scale and original size, the ground truth.
        batch_size: int. Images per detector call. Defaults to 8.
        verbose: bool. Print pycocotools' summary table.

    Returns:
        The dict of `coco_evaluate`; boxes are scored at the original size.
    """
    from keras_sepvit.tasks import retinanet

    results, gt = [], {"boxes": [], "labels": [], "sizes": [], "ids": [], "crowd": []}
    padding = {
        "image": 0.0, "scale": 0.0, "image_id": np.int64(0), "size": 0,
        "boxes": 0.0, "labels": -1, "crowd": False,
    }  # fmt: skip
    for batch in examples.padded_batch(batch_size, padding_values=padding).as_numpy_iterator():
        found = retinanet.detect(detector, batch["image"], batch_size=batch_size)
        for k in range(len(batch["image"])):
            height, width = (int(s) for s in batch["size"][k])
            boxes = found["boxes"][k] / batch["scale"][k]
            boxes = np.clip(boxes, 0, [width, height, width, height])
            labels = found["labels"][k]
            if source.category_ids is not None:
                labels = np.where(labels >= 0, np.take(source.category_ids, labels), -1)
            image_id = int(batch["image_id"][k])
            results += coco_results([boxes], [found["confidence"][k]], [labels], [image_id])
            gt["ids"].append(image_id)
            gt["sizes"].append((height, width))
            gt["boxes"].append(batch["boxes"][k])
            gt["labels"].append(batch["labels"][k])
            gt["crowd"].append(batch["crowd"][k])
    # padded_batch pads boxes with label -1: coco_ground_truth skips those rows.
    if source.coco_gt is not None:
        coco_gt = subset_ground_truth(source.coco_gt, gt["ids"])
    else:
        coco_gt = coco_ground_truth(
            gt["boxes"],
            gt["labels"],
            gt["sizes"],
            image_ids=gt["ids"],
            iscrowd=gt["crowd"],
            categories=range(len(source.class_names)),
        )
    return coco_evaluate(coco_gt, results, verbose=verbose)


class COCOEvaluation(keras.callbacks.Callback):
    """Adds val_map, val_map50 (pycocotools) to the epoch's logs, before checkpoints.

    Put it before the checkpoint callback that monitors "val_map".

    Args:
        source: the validation `keras_sepvit.data.Split`.
        examples: its `keras_sepvit.data.detection.eval_dataset`.
        batch_size: int. Images per detector call. Defaults to 8.
        split_name: str. The split's name in the printed line.
    """

    def __init__(self, source, examples, batch_size=8, split_name="validation"):
        super().__init__()
        self.source = source
        self.examples = examples
        self.batch_size = batch_size
        self.split_name = split_name

    def on_epoch_end(self, epoch, logs=None):
        metrics = evaluate_source(self.model, self.source, self.examples, self.batch_size)
        if logs is not None:
            logs["val_map"] = metrics["map"]
            logs["val_map50"] = metrics["map50"]
        print(
            f"Epoch {epoch + 1}: COCO mAP {metrics['map']:.4f}, mAP@0.5 "
            f"{metrics['map50']:.4f} on {self.split_name!r}",
            flush=True,
        )
