"""Multi-scale + flip testing (keras_sepvit.tasks.multi_scale), the heads' paper recipes
(keras_sepvit.tasks.segmentation_recipes) and train_segmentation.py --head upernet."""

import keras
import numpy as np
import pytest
from keras import ops

pytest.importorskip("keras_hub")

from keras_sepvit.tasks import multi_scale  # noqa: E402
from keras_sepvit.tasks.segmentation_recipes import build_segmenter, recipe  # noqa: E402


class _Probe:
    """A 'segmenter' whose logits are its input (3 classes): records the sizes it sees."""

    def __init__(self):
        self.sizes = []

    def __call__(self, x, training=False):
        self.sizes.append(tuple(ops.shape(x)[1:3]))
        return x


def _images(shape=(2, 12, 20, 3), seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def test_single_scale_without_flip_is_the_plain_softmax():
    x = _images()
    probe = _Probe()
    got = multi_scale.multi_scale_probabilities(probe, x, scales=(1.0,), flip=False)
    np.testing.assert_allclose(ops.convert_to_numpy(got), ops.convert_to_numpy(ops.softmax(x)),
                               rtol=1e-6, atol=1e-6)  # fmt: skip
    assert probe.sizes == [(12, 20)]


def test_flipped_run_is_mirrored_back():
    # The probe is flip-equivariant, so a correctly mirrored-back flip run equals the plain one;
    # one left mirrored would not (the images are not symmetric).
    x = _images()
    got = multi_scale.multi_scale_probabilities(_Probe(), x, scales=(1.0,), flip=True)
    np.testing.assert_allclose(ops.convert_to_numpy(got), ops.convert_to_numpy(ops.softmax(x)),
                               rtol=1e-6, atol=1e-6)  # fmt: skip
    assert not np.allclose(x, x[:, :, ::-1])


def test_every_scale_is_run_and_resized_back():
    x = _images()
    probe = _Probe()
    got = ops.convert_to_numpy(multi_scale.multi_scale_probabilities(probe, x))
    # The paper's scales, each with its mirrored run: sizes round(H s), round(W s).
    expected = [(round(12 * s), round(20 * s)) for s in multi_scale.PAPER_SCALES]
    assert probe.sizes == [size for size in expected for _ in (0, 1)]
    assert got.shape == (2, 12, 20, 3)
    np.testing.assert_allclose(got.sum(-1), 1.0, rtol=1e-5)
    # Each scale's prediction is resized to the image before the softmax (mmseg's order).
    half = ops.image.resize(ops.image.resize(x, (6, 10)), (12, 20))
    two = multi_scale.multi_scale_probabilities(_Probe(), x, scales=(0.5, 1.0), flip=False)
    np.testing.assert_allclose(
        ops.convert_to_numpy(two),
        ops.convert_to_numpy((ops.softmax(half) + ops.softmax(x)) / 2),
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.parametrize("scales", [(), (0.5, 0), (1.0, -1.0), ("a",), None, (float("nan"),)])
def test_bad_scales_are_refused_naming_them(scales):
    with pytest.raises(ValueError, match="scales"):
        multi_scale.multi_scale_probabilities(_Probe(), _images(), scales=scales)


def test_parse_scales():
    assert multi_scale.parse_scales("paper") == (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
    assert multi_scale.parse_scales("0.5, 1,1.5") == (0.5, 1.0, 1.5)
    with pytest.raises(ValueError, match="Received: '0.5,x'"):
        multi_scale.parse_scales("0.5,x")
    with pytest.raises(ValueError, match="Received: '1,-2'"):
        multi_scale.parse_scales("1,-2")


def test_images_must_be_a_batch():
    with pytest.raises(ValueError, match=r"Received shape \(12, 20, 3\)"):
        multi_scale.multi_scale_probabilities(_Probe(), _images()[0])


def _tiny_segmenter(head, num_classes=5):
    from test_segmentation import TINY

    from keras_sepvit.hub import SepViTBackbone

    keras.utils.set_random_seed(0)
    backbone = SepViTBackbone(**TINY, image_shape=(None, None, 3))
    return build_segmenter(head, backbone, num_classes, fpn_channels=16, head_channels=32)


@pytest.mark.parametrize("head", ["upernet", "semantic_fpn"])
def test_segmenters_at_the_papers_scales(head):
    model = _tiny_segmenter(head)
    x = _images((1, 64, 64, 3))
    got = ops.convert_to_numpy(multi_scale.multi_scale_probabilities(model, x))
    assert got.shape == (1, 64, 64, 5)
    np.testing.assert_allclose(got.sum(-1), 1.0, rtol=1e-5)
    plain = ops.convert_to_numpy(ops.softmax(model(x, training=False)))
    single = multi_scale.multi_scale_probabilities(model, x, scales=(1.0,), flip=False)
    np.testing.assert_allclose(ops.convert_to_numpy(single), plain, rtol=1e-5, atol=1e-6)
    assert not np.allclose(got, plain, atol=1e-4)  # the other scales do count


def test_evaluate_single_scale_equals_keras_mean_iou():
    from keras_sepvit.tasks.segmentation_losses import mean_iou

    model = _tiny_segmenter("upernet")
    rng = np.random.default_rng(1)
    batches = [(_images((2, 64, 64, 3), seed=s), rng.integers(0, 5, (2, 64, 64))) for s in (2, 3)]
    batches[0][1][0, :8] = 255  # ignored pixels
    metric = mean_iou(5)
    for images, labels in batches:
        metric.update_state(labels, model(images, training=False))
    got = multi_scale.evaluate_multi_scale(model, batches, 5, scales=(1.0,), flip=False)
    assert got == pytest.approx(float(metric.result()), abs=1e-6)
    with_ms = multi_scale.evaluate_multi_scale(model, batches, 5)
    assert 0.0 <= with_ms <= 1.0


def test_recipes_are_the_papers():
    upernet_b = recipe("upernet", "sepvit_base")
    assert upernet_b == dict(lr=6e-5, weight_decay=0.03, iterations=160000, warmup_steps=1500,
                             poly_power=1.0, drop_path=0.5)  # fmt: skip
    assert recipe("upernet", "sepvit_tiny")["weight_decay"] == 0.01
    assert recipe("upernet", "sepvit_small")["drop_path"] == 0.3
    fpn_t = recipe("semantic_fpn", "sepvit_tiny")
    assert fpn_t == dict(lr=1e-4, weight_decay=1e-4, iterations=80000, warmup_steps=0,
                         poly_power=0.9, drop_path=0.2)  # fmt: skip
    assert recipe("semantic_fpn", "sepvit_base")["drop_path"] == 0.4
    short = recipe("upernet", "sepvit_lite", iterations=1600)  # the paper's warm-up share
    assert short["iterations"] == 1600 and short["warmup_steps"] == 15
    with pytest.raises(ValueError, match="Received: head='pspnet'"):
        recipe("pspnet", "sepvit_tiny")
    with pytest.raises(ValueError, match="Received: backbone='resnet50'"):
        recipe("upernet", "resnet50")


def test_build_segmenter_heads():
    from keras_sepvit.tasks.semantic_fpn import SemanticFPNSegmenter
    from keras_sepvit.tasks.upernet import UperNetSegmenter

    assert isinstance(_tiny_segmenter("upernet"), UperNetSegmenter)
    assert isinstance(_tiny_segmenter("semantic_fpn"), SemanticFPNSegmenter)
    with pytest.raises(ValueError, match="Received: head='fcn'"):
        _tiny_segmenter("fcn")


def test_script_defaults_follow_the_head(load_script):
    script = load_script("examples", "train_segmentation")
    args = script.parse_args(["--head", "upernet", "--backbone", "sepvit_base"])
    assert (args.lr, args.weight_decay, args.iterations) == (6e-5, 0.03, 160000)
    assert (args.warmup_steps, args.poly_power, args.drop_path) == (1500, 1.0, 0.5)
    assert args.test_scales == (1.0,)
    args = script.parse_args(["--backbone", "sepvit_small"])  # Semantic FPN, as before
    assert (args.lr, args.weight_decay, args.iterations, args.drop_path) == (1e-4, 1e-4, 80000, 0.3)
    args = script.parse_args(["--head", "upernet", "--lr", "1e-3", "--test-scales", "paper"])
    assert args.lr == 1e-3 and args.test_scales == multi_scale.PAPER_SCALES
    with pytest.raises(SystemExit):
        script.parse_args(["--test-scales", "0.5,zero"])


@pytest.mark.slow
def test_script_trains_upernet_and_tests_multi_scale(load_script, monkeypatch, tmp_path, capsys):
    from test_segmentation import TINY  # noqa: I001
    from test_segmentation_script import DIGITS

    from keras_sepvit import training
    from keras_sepvit.demos import backbones
    from keras_sepvit.hub import SepViTBackbone
    from keras_sepvit.tasks.upernet import UperNetSegmenter

    def tiny(name, image_size, drop_path_rate=0.0):
        return SepViTBackbone(**TINY, drop_path_rate=drop_path_rate,
                              image_shape=(image_size, image_size, 3))  # fmt: skip

    monkeypatch.setattr(backbones, "build_backbone", tiny)
    script = load_script("examples", "train_segmentation")
    out = str(tmp_path / "run")
    args = [*DIGITS, "--head", "upernet", "--iterations", "2", "--steps-per-epoch", "1",
            "--test-scales", "1,1.5", "--test-flip", "--out", out]  # fmt: skip
    built = []
    original = script.build_model
    monkeypatch.setattr(script, "build_model", lambda a: built.append(original(a)) or built[-1])
    script.main(args)
    assert isinstance(built[0], UperNetSegmenter) and built[1].input_shape == (None, None, None, 3)
    assert training.read_state(out)["iterations"] == 2
    line = [s for s in capsys.readouterr().out.splitlines() if s.startswith("Multi-scale")]
    assert line and line[0].startswith("Multi-scale test (scales 1, 1.5, flip): mIoU ")
    assert 0.0 <= float(line[0].rsplit(" ", 1)[1]) <= 1.0
    # A finished run, resumed with other test scales: its final weights are tested again.
    rest = args[: args.index("--test-scales")]
    script.main([*rest, "--test-scales", "1", "--test-flip", "--out", out, "--resume"])
    printed = capsys.readouterr().out
    assert "already finished" in printed and "Multi-scale test (scales 1, flip): mIoU " in printed
