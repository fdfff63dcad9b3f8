"""COCO instance segmentation mAP (`bbox` and `segm`) with pycocotools.

Mask R-CNN's detections (`keras_sepvit.tasks.mask_rcnn.detect_instances`,
or `model.predict`) become COCO results with RLE masks
(`pycocotools.mask.encode`), ground-truth instance masks an in-memory
`COCO`, and `COCOeval` runs once per IoU type. Boxes and masks are scored at
the original image size when `scales` / `image_sizes` are given (the
detector saw the image resized by `scale` and padded bottom/right, as
`keras_sepvit.data.detection` prepares it): boxes are divided by the scale,
masks cropped to the resized image and resized back (nearest).

Example:

```python
import numpy as np
from keras_sepvit.tasks.coco_mask_eval import evaluate_instances

masks = np.zeros((1, 1, 32, 32), "uint8")
masks[0, 0, 4:20, 6:30] = 1
metrics = evaluate_instances(
    gt_masks=masks, gt_labels=[[1]],
    predictions={"boxes": [[[6, 4, 30, 20]]], "classes": [[1]], "scores": [[0.9]],
                 "masks": masks},
)
metrics["segm"]["map"]  # 1.0
```
"""

import contextlib
import io

import numpy as np

from keras_sepvit.tasks.coco_eval import (
    STAT_NAMES,
    COCOEvaluation,
    _image_ids,
    _index,
    _pycocotools,
    subset_ground_truth,
)

IOU_TYPES = ("bbox", "segm")


def _mask_api():
    try:
        from pycocotools import mask as mask_api
    except ImportError as err:  # pragma: no cover - the [hub] extra installs it
        raise ImportError(
            "COCO evaluation needs pycocotools: pip install keras-sepvit[hub]"
        ) from err
    return mask_api


def encode_masks(masks):
    """(K, H, W) binary masks -> K COCO RLEs (`counts` as str, JSON-ready)."""
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"`masks` must be (K, H, W). Received: shape {masks.shape}")
    if not len(masks):
        return []
    rles = _mask_api().encode(np.asfortranarray(masks.transpose(1, 2, 0).astype("uint8")))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def restore_masks(masks, scale, image_size):
    """Network-input masks (K, h, w) -> (K, height, width) at the original size.

    The detector's input is the image resized by `scale` and padded at the
    bottom/right: the resized part is cropped and resized back (nearest,
    half-pixel centres).
    """
    masks = np.asarray(masks)
    height, width = (int(s) for s in image_size)
    rows = np.minimum(((np.arange(height) + 0.5) * scale).astype("int64"), masks.shape[1] - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * scale).astype("int64"), masks.shape[2] - 1)
    return masks[:, rows][:, :, cols]


def instance_results(predictions, image_ids=None, category_ids=None, scales=None, image_sizes=None):
    """Mask R-CNN predictions -> COCO results (`bbox` and RLE `segmentation` per detection).

    Args:
        predictions: dict of per-image arrays: "boxes" (N, K, 4) xyxy
            pixels, "classes" (N, K) (-1: empty), "scores" (N, K), "masks"
            (N, K, H, W) 0/1.
        image_ids: per image, its id. Defaults to 1..N.
        category_ids: class index -> the ground truth's category id.
            Defaults to the class index.
        scales: per image, the resize factor the network input had.
            Defaults to 1 (no resize).
        image_sizes: per image, the original (height, width); needed with `scales`.
    """
    for key in ("boxes", "classes", "scores", "masks"):
        if key not in predictions:
            raise ValueError(
                f"`predictions` needs 'boxes', 'classes', 'scores' and 'masks'. Received: keys "
                f"{sorted(predictions)}"
            )
    count = len(predictions["boxes"])
    image_ids = _image_ids(image_ids, count)
    if scales is not None and image_sizes is None:
        raise ValueError("`scales` needs `image_sizes` (the original sizes). Received: None")
    results = []
    for n, image_id in enumerate(image_ids):
        classes = np.asarray(predictions["classes"][n]).reshape(-1).astype("int64")
        keep = np.flatnonzero(classes >= 0)
        boxes = np.asarray(predictions["boxes"][n], "float64").reshape(-1, 4)[keep]
        scores = np.asarray(predictions["scores"][n], "float64").reshape(-1)[keep]
        masks = np.asarray(predictions["masks"][n])[keep]
        if scales is not None:
            boxes = boxes / float(scales[n])
            masks = restore_masks(masks, float(scales[n]), image_sizes[n])
            height, width = (int(s) for s in image_sizes[n])
            boxes = np.clip(boxes, 0, [width, height, width, height])
        labels = classes[keep]
        if category_ids is not None:
            labels = np.take(np.asarray(category_ids), labels)
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
        for k, rle in enumerate(encode_masks(masks)):
            results.append(
                {
                    "image_id": image_id,
                    "category_id": int(labels[k]),
                    "bbox": [float(v) for v in xywh[k]],
                    "score": float(scores[k]),
                    "segmentation": rle,
                }
            )
    return results


def instance_ground_truth(masks, labels, image_ids=None, iscrowd=None, categories=None):
    """An in-memory `COCO` of ground-truth instance masks.

    Args:
        masks: per image, (M_i, H, W) 0/1 masks (rows with a negative label
            are padding and skipped).
        labels: per image, (M_i,) category ids.
        image_ids: per image, an int id. Defaults to 1..N.
        iscrowd: per image, (M_i,) crowd flags. Defaults to none.
        categories: all category ids. Defaults to those found in `labels`.

    Boxes and areas come from the masks (`pycocotools.mask.toBbox`, `area`).
    """
    if len(masks) != len(labels):
        raise ValueError(
            "`masks` and `labels` must have one entry per image. Received: "
            f"{len(masks)} masks, {len(labels)} labels"
        )
    mask_api = _mask_api()
    image_ids = _image_ids(image_ids, len(masks))
    images, annotations, found = [], [], set()
    for n, image_id in enumerate(image_ids):
        instance = np.asarray(masks[n])
        label = np.asarray(labels[n]).reshape(-1).astype("int64")
        if instance.ndim != 3 or len(instance) != len(label):
            raise ValueError(
                f"Image {n}: masks must be (M, H, W) with one label each. Received: masks "
                f"{instance.shape}, {len(label)} labels"
            )
        images.append({"id": image_id, "height": instance.shape[1], "width": instance.shape[2]})
        keep = np.flatnonzero(label >= 0)
        crowd = np.zeros(len(label), "int64") if iscrowd is None else np.asarray(iscrowd[n])
        rles = encode_masks(instance[keep])
        for k, rle in zip(keep, rles):
            found.add(int(label[k]))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(label[k]),
                    "segmentation": rle,
                    "area": float(mask_api.area(rle)),
                    "bbox": [float(v) for v in mask_api.toBbox(rle)],
                    "iscrowd": int(crowd[k]),
                }
            )
    ids = sorted(found if categories is None else {int(c) for c in categories})
    return _index(
        {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": c, "name": str(c)} for c in ids],
        }
    )


def coco_evaluate_instances(coco_gt, results, iou_types=IOU_TYPES, verbose=False):
    """`COCOeval` for each IoU type: `{"bbox": {...}, "segm": {...}}` of `STAT_NAMES`.

    With no detection every number is 0.
    """
    _, COCOeval = _pycocotools()
    unknown = [t for t in iou_types if t not in IOU_TYPES]
    if unknown:
        raise ValueError(f"`iou_types` must be among {IOU_TYPES}. Received: {tuple(iou_types)}")
    if not results:
        return {t: dict.fromkeys(STAT_NAMES, 0.0) for t in iou_types}
    missing = sorted({r["image_id"] for r in results} - set(coco_gt.getImgIds()))
    if missing:
        raise ValueError(
            "Results name images the ground truth does not have. Received: image ids "
            f"{missing[:10]}"
        )
    output = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    metrics = {}
    with output:
        detections = coco_gt.loadRes(results)
        for iou_type in iou_types:
            evaluation = COCOeval(coco_gt, detections, iou_type)
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
            # -1 means "no ground truth in this area range": report it as 0.
            metrics[iou_type] = {
                name: max(float(v), 0.0) for name, v in zip(STAT_NAMES, evaluation.stats)
            }
    return metrics


def evaluate_instances(gt_masks, gt_labels, predictions, image_ids=None, categories=None,
                       verbose=False):  # fmt: skip
    """`bbox` and `segm` COCO metrics of Mask R-CNN predictions against gt masks.

    `gt_masks` (N, M, H, W) and `gt_labels` (N, M) (padded with label -1) at
    the predictions' size; `predictions` as `instance_results` takes them.
    """
    coco_gt = instance_ground_truth(gt_masks, gt_labels, image_ids, categories=categories)
    results = instance_results(predictions, image_ids)
    return coco_evaluate_instances(coco_gt, results, verbose=verbose)


def evaluate_instance_source(model, source, examples, batch_size=8, verbose=False):
    """COCO `bbox` and `segm` metrics of a Mask R-CNN on a detection split with masks.

    Args:
        model: a `keras_sepvit.tasks.mask_rcnn.MaskRCNN` (run through
            `detect_instances`).
        source: the `keras_sepvit.data.Split` the examples come from, loaded
            with `masks=True`: its `coco_gt` holds the instance masks (a
            COCO-JSON folder's, or the digit scenes'), `category_ids` maps
            labels to the file's category ids.
        examples: `keras_sepvit.data.detection.eval_dataset(source, ...)`.
        batch_size: int. Images per model call. Defaults to 8.
        verbose: bool. Print pycocotools' summary tables.

    Returns:
        `{"bbox": {...}, "segm": {...}}` of `STAT_NAMES`; boxes and masks are
        scored at the original image size (`instance_results`' `scales`).
    """
    from keras_sepvit.tasks.mask_rcnn import detect_instances

    if source.coco_gt is None:
        raise ValueError(
            "`source` has no instance-mask ground truth (coco_gt): load it with masks=True"
        )
    padding = {
        "image": 0.0, "scale": 0.0, "image_id": np.int64(0), "size": 0,
        "boxes": 0.0, "labels": -1, "crowd": False,
    }  # fmt: skip
    results, ids = [], []
    for batch in examples.padded_batch(batch_size, padding_values=padding).as_numpy_iterator():
        found = detect_instances(model, batch["image"], batch_size=batch_size)
        image_ids = [int(i) for i in batch["image_id"]]
        results += instance_results(
            found, image_ids, source.category_ids, batch["scale"], batch["size"]
        )
        ids += image_ids
    return coco_evaluate_instances(subset_ground_truth(source.coco_gt, ids), results,
                                   verbose=verbose)  # fmt: skip


class InstanceCOCOEvaluation(COCOEvaluation):
    """Adds val_map, val_map50 (boxes) and val_mask_map, val_mask_map50 (masks) to the
    epoch's logs (pycocotools `bbox` and `segm`), before checkpoints.

    Put it before the checkpoint callback that monitors "val_mask_map".

    Args:
        source: the validation `keras_sepvit.data.Split` (loaded with masks).
        examples: its `keras_sepvit.data.detection.eval_dataset`.
        batch_size: int. Images per model call. Defaults to 8.
        split_name: str. The split's name in the printed line.
    """

    def on_epoch_end(self, epoch, logs=None):
        metrics = evaluate_instance_source(self.model, self.source, self.examples, self.batch_size)
        boxes, masks = metrics["bbox"], metrics["segm"]
        if logs is not None:
            logs["val_map"], logs["val_map50"] = boxes["map"], boxes["map50"]
            logs["val_mask_map"], logs["val_mask_map50"] = masks["map"], masks["map50"]
        print(
            f"Epoch {epoch + 1}: COCO box mAP {boxes['map']:.4f} (@0.5 {boxes['map50']:.4f}), "
            f"mask mAP {masks['map']:.4f} (@0.5 {masks['map50']:.4f}) on {self.split_name!r}",
            flush=True,
        )
