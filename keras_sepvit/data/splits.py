"""The one split type of every input pipeline, and the error they raise.

A `Split` is a `tf.data.Dataset` of examples and the facts the pipelines and
scripts need about it: classification (`(image, label)` pairs, class names),
segmentation (`(image, label map)` pairs) and detection (dicts with boxes,
labels, crowd flags, image ids; COCO ground truth and category ids when the
source is a COCO-JSON folder) all use it.
"""

from dataclasses import dataclass, field


class DataError(ValueError):
    """A dataset that cannot be read as asked: missing files, bad annotations, wrong kind.

    A `ValueError`, so library callers may catch either; the command-line
    scripts turn it into `error: <message>` and exit status 1.
    """


@dataclass
class Split:
    """A split of a dataset: a `tf.data.Dataset` and facts about it.

    Args:
        dataset: `tf.data.Dataset` of the examples (their layout is the
            loader's: see `classification`, `segmentation`, `detection`).
        num_examples: int, or None where the source does not say.
        class_names: list of str, class id order; None where unknown
            (segmentation label maps).
        coco_gt: detection only: the `pycocotools.coco.COCO` ground truth of a
            COCO-JSON folder; None builds it from the examples when evaluating.
        category_ids: detection only: contiguous label -> COCO category id
            (None: the labels are the ids).
    """

    dataset: object
    num_examples: int = None
    class_names: list = None
    coco_gt: object = field(default=None, repr=False)
    category_ids: list = None

    def __post_init__(self):
        if self.class_names is not None:
            self.class_names = list(self.class_names)

    @property
    def num_classes(self):
        """The number of classes (None when `class_names` is None)."""
        return None if self.class_names is None else len(self.class_names)
