"""SepViT presets for keras-hub: architecture configs only, no weights, no download.

The authors published no weights, so every preset is a config: a folder
(`keras_sepvit/hub/presets/<name>/`, shipped with the package) holding
`config.json` (the `SepViTBackbone` arguments), `image_converter.json`
(ImageNet mean/std) and `metadata.json`, and registered with keras-hub under
its name. `SepViTBackbone.from_preset(name)` builds the architecture with
random weights (`load_weights` defaults to False for these presets; True is
refused). Variants: Table 1 of the paper (`keras_sepvit.MODEL_CONFIGS`);
"_dense" presets are the authors' detection/segmentation backbone, the others
the classifier's stages.

    python -m keras_sepvit.hub.sepvit_presets

writes the folders from this table (a test checks that they match).
"""

import json
import os

from keras_sepvit.model import MODEL_CONFIGS
from keras_sepvit.preprocessing import normalization_affine

PAPER = "https://arxiv.org/abs/2203.15380"
PRESETS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "presets")

# Parameter counts of the built backbones (tests/test_hub_backbone.py checks them).
# (variant, dense): params
PARAMS = {
    ("lite", True): 3763744,
    ("lite", False): 3403616,
    ("tiny", True): 33655392,
    ("tiny", False): 30412320,
    ("small", True): 50222688,
    ("small", False): 45799968,
    ("base", True): 89213056,
    ("base", False): 81350016,
}
TITLES = {"lite": "SepViT-Lite", "tiny": "SepViT-T", "small": "SepViT-S", "base": "SepViT-B"}


def preset_name(variant, dense):
    return f"sepvit_{variant}_dense" if dense else f"sepvit_{variant}"


def backbone_config(variant, dense):
    """The `SepViTBackbone` arguments of a preset (Table 1 of the paper)."""
    row = MODEL_CONFIGS[variant]
    return {
        "depths": list(row["depths"]),
        "channels": list(row["channels"]),
        "num_heads": list(row["num_heads"]),
        "window_sizes": [list(sizes) for sizes in row["window_sizes"]],
        "mlp_ratio": 4.0,
        "drop_path_rate": float(row.get("drop_path_rate", 0.0)),
        "dense": dense,
        "image_shape": None,
        "data_format": None,
    }


def _description(variant, dense):
    kind = (
        "the authors' dense detection/segmentation backbone (per-stage norms, PSA in every block)"
        if dense
        else "the classifier's four stages without the final norm and head"
    )
    return (
        f"{TITLES[variant]} ({PAPER}, Table 1): {kind}. Architecture config only, "
        "randomly initialised: the authors published no weights."
    )


backbone_presets = {
    preset_name(variant, dense): {
        "metadata": {
            "description": _description(variant, dense),
            "params": PARAMS[(variant, dense)],
            "path": "sepvit",
            "official_name": "SepViT",
            "model_card": PAPER,
            "config_only": True,
        },
        "kaggle_handle": os.path.join(PRESETS_DIR, preset_name(variant, dense)),
    }
    for variant in MODEL_CONFIGS
    for dense in (True, False)
}


def preset_files(name):
    """{file name: JSON text} of a preset folder."""
    variant = name.removeprefix("sepvit_").removesuffix("_dense")
    dense = name.endswith("_dense")
    scale, offset = normalization_affine(3)  # the SepViTImageConverter's
    config = {
        "module": "keras_sepvit.hub.sepvit_backbone",
        "class_name": "SepViTBackbone",
        "config": {"name": name, "trainable": True, **backbone_config(variant, dense)},
        "registered_name": "keras_sepvit>SepViTBackbone",
    }
    converter = {
        "module": "keras_sepvit.hub.sepvit_image_converter",
        "class_name": "SepViTImageConverter",
        "config": {
            "name": "sepvit_image_converter",
            "trainable": True,
            "image_size": None,
            "scale": scale,
            "offset": offset,
            "interpolation": "bilinear",
            "antialias": False,
            "crop_to_aspect_ratio": True,
            "pad_to_aspect_ratio": False,
            "bounding_box_format": "yxyx",
        },
        "registered_name": "keras_sepvit>SepViTImageConverter",
    }
    metadata = {
        "parameter_count": PARAMS[(variant, dense)],
        "description": backbone_presets[name]["metadata"]["description"],
        "weights": None,
        "tasks": [],
    }
    return {
        "config.json": json.dumps(config, indent=4) + "\n",
        "image_converter.json": json.dumps(converter, indent=4) + "\n",
        "metadata.json": json.dumps(metadata, indent=4) + "\n",
    }


def write_presets(directory=PRESETS_DIR):
    """Writes every preset folder under `directory` from the table above."""
    for name in backbone_presets:
        folder = os.path.join(directory, name)
        os.makedirs(folder, exist_ok=True)
        for file_name, text in preset_files(name).items():
            with open(os.path.join(folder, file_name), "w", encoding="utf-8") as f:
                f.write(text)


if __name__ == "__main__":
    write_presets()
    print(f"wrote {len(backbone_presets)} presets to {PRESETS_DIR}")
