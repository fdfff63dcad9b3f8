"""The dense demo's table, floors and picture (`examples/dense_demo.py`).

Results are a dict of head -> rows (one per backbone, in `BACKBONES` order):
"retinanet" and "mask_rcnn" on the detection scenes, "semantic_fpn" and
"upernet" on the segmentation scenes.
"""

import numpy as np

BACKBONES = ("sepvit_lite", "mit_b0")
HEAD_NAMES = {
    "retinanet": "RetinaNet",
    "mask_rcnn": "Mask R-CNN",
    "semantic_fpn": "Semantic FPN",
    "upernet": "UperNet",
}
# (head, row key, what the table calls it)
METRICS = (
    ("retinanet", "map50", "box mAP@0.5"),
    ("retinanet", "map", "box mAP"),
    ("mask_rcnn", "box_map50", "box mAP@0.5"),
    ("mask_rcnn", "mask_map50", "mask mAP@0.5"),
    ("mask_rcnn", "mask_map", "mask mAP"),
    ("semantic_fpn", "miou", "mIoU"),
    ("upernet", "miou", "mIoU"),
)
# SepViT-Lite's floors in a full run; UperNet's is relative to Semantic FPN.
FLOOR = {"map50": 0.5, "mask_map50": 0.5, "miou": 0.6, "upernet_miou_vs_fpn": -0.02}


def seconds(row):
    return row["seconds"] if "seconds" in row else row["train_seconds"]


def format_table(results):
    """A Markdown table: one line per (head, metric), one column per backbone."""
    names = [r["backbone"] for r in next(iter(results.values()))]
    lines = [
        f"| head | metric | {' | '.join(names)} | train (s) |",
        "|---|---|" + "---|" * len(names) + "---|",
    ]
    for head, key, label in METRICS:
        if head not in results:
            continue
        rows = results[head]
        values = " | ".join(f"{r[key]:.3f}" for r in rows)
        times = " / ".join(f"{seconds(r):.0f}" for r in rows)
        lines.append(f"| {HEAD_NAMES[head]} | {label} | {values} | {times} |")
    return "\n".join(lines)


def floors_met(results):
    """Which of `FLOOR` SepViT-Lite (the first row of each head) meets."""
    first = {head: rows[0] for head, rows in results.items()}
    return {
        "map50": first["retinanet"]["map50"] >= FLOOR["map50"],
        "mask_map50": first["mask_rcnn"]["mask_map50"] >= FLOOR["mask_map50"],
        "miou": first["semantic_fpn"]["miou"] >= FLOOR["miou"],
        "upernet_miou_vs_fpn": first["upernet"]["miou"] - first["semantic_fpn"]["miou"]
        >= FLOOR["upernet_miou_vs_fpn"],
    }


def floor_text():
    return (
        f"SepViT-Lite RetinaNet mAP@0.5 >= {FLOOR['map50']}, Mask R-CNN mask mAP@0.5 >= "
        f"{FLOOR['mask_map50']}, Semantic FPN mIoU >= {FLOOR['miou']}, UperNet mIoU >= "
        f"Semantic FPN's {FLOOR['upernet_miou_vs_fpn']:+.2f}"
    )


def comparison(results):
    """One sentence: SepViT-Lite vs MiT-B0 on each head's main score."""
    parts = []
    for head, key, label in METRICS:
        if head in results and key in ("map50", "mask_map50", "miou"):
            lite, peer = (r[key] for r in results[head][:2])
            parts.append(f"{HEAD_NAMES[head]} {label} {lite:.3f} vs {peer:.3f}")
    return "SepViT-Lite vs MiT-B0, same data, heads and budget: " + ", ".join(parts) + "."


def json_rows(results):
    """The rows without their models, JSON-ready."""
    keep = (
        "backbone", "head", "map50", "map", "box_map50", "box_map", "mask_map50", "mask_map",
        "miou", "seconds", "train_seconds", "steps", "params", "backbone_params",
    )  # fmt: skip
    return {
        head: [{k: r[k] for k in keep if k in r} for r in rows] for head, rows in results.items()
    }


def _overlay(ax, image, masks, classes, scores, threshold=0.5):
    colours = np.array(
        [[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48]], "float32"
    )
    picture = image.astype("float32").copy()
    for k, (mask, score) in enumerate(zip(masks, scores)):
        if score < threshold:
            continue
        on = mask.astype(bool)
        picture[on] = 0.45 * picture[on] + 0.55 * colours[k % len(colours)]
        rows, cols = np.nonzero(on)
        if len(rows):
            ax.text(cols.min(), rows.min(), f"{classes[k]} {score:.2f}", color="white",
                    fontsize=6, va="bottom", backgroundcolor=(0, 0, 0, 0.5))  # fmt: skip
    ax.imshow(picture.astype("uint8"))
    ax.set_axis_off()


def draw(path, models, test_scenes, seg_data, count=4):
    """SepViT-Lite's predictions on held-out scenes, one row per head."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from keras_sepvit.demos.detection import draw_detections, predict_detections
    from keras_sepvit.preprocessing import IMAGENET_MEAN, IMAGENET_STD, normalize_images
    from keras_sepvit.tasks.mask_rcnn import detect_instances

    images = test_scenes["images"][:count]
    found = predict_detections(models["retinanet"], images)
    instances = detect_instances(models["mask_rcnn"], normalize_images(images))
    seg_images, seg_masks = seg_data["test"]
    # The segmentation scenes are stored normalised: back to pixels for the picture.
    pixels = np.clip((seg_images[:count] * IMAGENET_STD + IMAGENET_MEAN) * 255, 0, 255)
    predicted = {
        head: np.argmax(models[head].predict(seg_images[:count], verbose=0), axis=-1)
        for head in ("semantic_fpn", "upernet")
    }
    fig, axes = plt.subplots(6, count, figsize=(3 * count, 18))
    for i in range(count):
        draw_detections(
            axes[0, i], images[i], found["boxes"][i], found["labels"][i], found["confidence"][i]
        )
        axes[0, i].set_title("RetinaNet (SepViT-Lite)", fontsize=8)
        _overlay(axes[1, i], images[i], instances["masks"][i], instances["classes"][i],
                 instances["scores"][i])  # fmt: skip
        axes[1, i].set_title("Mask R-CNN instances (SepViT-Lite)", fontsize=8)
        axes[2, i].imshow(pixels[i].astype("uint8"))
        axes[2, i].set_title("segmentation scene", fontsize=8)
        axes[3, i].imshow(seg_masks[i], vmin=0, vmax=10, cmap="tab20", interpolation="nearest")
        axes[3, i].set_title("true mask", fontsize=8)
        for row, head in ((4, "semantic_fpn"), (5, "upernet")):
            axes[row, i].imshow(predicted[head][i], vmin=0, vmax=10, cmap="tab20",
                                interpolation="nearest")  # fmt: skip
            axes[row, i].set_title(f"{HEAD_NAMES[head]} (SepViT-Lite)", fontsize=8)
        for ax in axes[2:, i]:
            ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
