"""The paper's ADE20K training settings per segmentation head, and the head builder.

`recipe(head, backbone)` gives the defaults `examples/train_segmentation.py`
uses; `build_segmenter(head, backbone, num_classes, **options)` builds the
uncompiled segmenter. One table, so that the script, the demos and the docs
agree on what "the paper's schedule" is.

- Semantic FPN (Sec. 4.2): AdamW, learning rate and weight decay 1e-4, 80k
  iterations at batch 16, poly decay (power 0.9, mmseg's default), stochastic
  depth 0.2 / 0.3 / 0.4 for SepViT-T / S / B.
- UperNet (Sec. 4.2): AdamW, learning rate 6e-5, weight decay 0.01 for T / S
  and 0.03 for B, 160k iterations at batch 16, stochastic depth 0.2 / 0.3 /
  0.5. The paper follows the Swin/Twins mmseg convention for what it leaves
  unsaid, which we take: 1,500 linear warm-up iterations and poly decay with
  power 1.0 to 0 (Swin's `upernet_swin` schedule).
- DeepLabV3+ is not in the paper; it gets Semantic FPN's recipe.

SepViT-Lite and MiT-B0 are not in the paper's segmentation tables; they get
stochastic depth 0.1.
"""

HEADS = ("semantic_fpn", "upernet", "deeplabv3")
DEFAULT_HEAD_CHANNELS = {"semantic_fpn": 128, "upernet": 512}
BACKBONE_SIZES = {  # backbone -> its row in the paper's per-variant lists
    "sepvit_lite": "lite",
    "mit_b0": "lite",
    "sepvit_tiny": "T",
    "sepvit_small": "S",
    "sepvit_base": "B",
}
_FPN = dict(
    lr=1e-4,
    weight_decay={"lite": 1e-4, "T": 1e-4, "S": 1e-4, "B": 1e-4},
    iterations=80000,
    warmup_steps=0,
    poly_power=0.9,
    drop_path={"lite": 0.1, "T": 0.2, "S": 0.3, "B": 0.4},
)
RECIPES = {
    "semantic_fpn": _FPN,
    "deeplabv3": _FPN,
    "upernet": dict(
        lr=6e-5,
        weight_decay={"lite": 0.01, "T": 0.01, "S": 0.01, "B": 0.03},
        iterations=160000,
        warmup_steps=1500,
        poly_power=1.0,
        drop_path={"lite": 0.1, "T": 0.2, "S": 0.3, "B": 0.5},
    ),
}


def _check(head, backbone):
    if head not in RECIPES:
        raise ValueError(f"`head` must be one of {HEADS}. Received: head={head!r}")
    if backbone not in BACKBONE_SIZES:
        raise ValueError(
            f"`backbone` must be one of {tuple(BACKBONE_SIZES)}. Received: backbone={backbone!r}"
        )


def recipe(head, backbone, iterations=None):
    """The paper's settings for `head` on `backbone`: a dict with `lr`,
    `weight_decay`, `iterations`, `warmup_steps`, `poly_power`, `drop_path`.

    With `iterations` given (a run shorter than the paper's), the warm-up is
    the paper's share of it (UperNet: 1,500 / 160k), and `iterations` is that
    number."""
    _check(head, backbone)
    size = BACKBONE_SIZES[backbone]
    table = RECIPES[head]
    settings = {
        key: value[size] if isinstance(value, dict) else value for key, value in table.items()
    }
    if iterations is not None:
        share = settings["warmup_steps"] / settings["iterations"]
        settings["warmup_steps"] = min(settings["warmup_steps"], int(share * iterations))
        settings["iterations"] = iterations
    return settings


def compile_segmenter(
    model,
    num_classes,
    lr,
    weight_decay,
    total_steps,
    warmup_steps=0,
    poly_power=0.9,
    clip_norm=0.0,
    ignore_class=255,
):
    """Compiles a segmenter for training as the paper does: AdamW (no weight
    decay on norms, biases, position encodings and window tokens:
    `keras_sepvit.training.no_weight_decay_variables`) with linear warm-up
    and poly decay over `total_steps`, per-pixel cross-entropy and mean IoU,
    both ignoring `ignore_class`; `clip_norm` > 0 clips the global gradient
    norm."""
    import keras

    from keras_sepvit import training
    from keras_sepvit.tasks.segmentation_losses import mean_iou, segmentation_loss
    from keras_sepvit.training.schedules import PolyDecay

    schedule = PolyDecay(lr, total_steps, warmup_steps=warmup_steps, power=poly_power)
    optimizer = keras.optimizers.AdamW(
        schedule, weight_decay=weight_decay, global_clipnorm=clip_norm or None
    )
    optimizer.exclude_from_weight_decay(var_list=training.no_weight_decay_variables(model))
    model.compile(
        optimizer=optimizer,
        loss=segmentation_loss(ignore_class),
        metrics=[mean_iou(num_classes, ignore_class)],
    )
    return model


def build_segmenter(
    head,
    backbone,
    num_classes,
    fpn_channels=256,
    head_channels=None,
    norm="group",
    dropout=0.1,
):
    """The uncompiled segmenter of `head` ("semantic_fpn", "upernet" or
    "deeplabv3") on a built `backbone` model.

    `head_channels`: Semantic FPN's head channels (default 128) or UperNet's
    channels (default 512, mmseg's). `fpn_channels` and `norm` are Semantic
    FPN's; `dropout` is the channel dropout before the classifier (Semantic
    FPN, UperNet). DeepLabV3+ takes keras-hub's defaults."""
    if head not in RECIPES:
        raise ValueError(f"`head` must be one of {HEADS}. Received: head={head!r}")
    if head_channels is None:
        head_channels = DEFAULT_HEAD_CHANNELS.get(head)
    if head == "deeplabv3":
        from keras_sepvit.tasks.deeplab import deeplabv3_segmenter

        return deeplabv3_segmenter(backbone, num_classes, compile=False)
    if head == "upernet":
        from keras_sepvit.tasks.upernet import UperNetSegmenter

        return UperNetSegmenter(
            backbone, num_classes, channels=head_channels, dropout=dropout, compile=False
        )
    from keras_sepvit.tasks.semantic_fpn import SemanticFPNSegmenter

    groups = 32 if head_channels % 32 == 0 else 1
    return SemanticFPNSegmenter(
        backbone,
        num_classes,
        fpn_channels=fpn_channels,
        head_channels=head_channels,
        norm=norm,
        groups=groups,
        dropout=dropout,
        compile=False,
    )
