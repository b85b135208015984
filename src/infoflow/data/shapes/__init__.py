"""The built-in offline dataset `shapes`: one class-defining shape per image on a cluttered background.

Every image holds exactly one filled object whose SHAPE is its class (``SHAPE_NAMES``); its colour,
position, size and rotation are random and independent of the class, and all classes have the same
area at a given size. It is drawn last, on top of a smooth random colour field and of distractors from
a separate vocabulary (thin line segments and small dots) whose number, colours and positions are
independent of the class too, so only the object's shape tells the class. Each image comes with the
object's pixel mask and its tight bounding box. Optionally, the training split also holds images with
no object (``num_empty``).

Modules: `geometry` (the shapes' outlines), `render` (images, masks, splits), `masks` (masks <-> boxes),
`dataset` (a split as tensors), `augment` (training-time transforms), `datamodule` (Lightning).
"""

from infoflow.data.shapes.augment import dihedral_augment, relabel_empty
from infoflow.data.shapes.datamodule import ShapesDataModule
from infoflow.data.shapes.dataset import ShapesDataset
from infoflow.data.shapes.geometry import SHAPE_NAMES
from infoflow.data.shapes.masks import box_to_mask, mask_to_box
from infoflow.data.shapes.render import (
    BACKGROUND_RANGE,
    EMPTY_SPLIT_ID,
    MIN_CONTRAST,
    MIN_IMAGE_SIZE,
    NOISE_STD,
    NUM_DISTRACTORS,
    OBJECT_SCALE,
    SPLITS,
    render_image,
    render_split,
)

__all__ = [
    "BACKGROUND_RANGE", "EMPTY_SPLIT_ID", "MIN_CONTRAST", "MIN_IMAGE_SIZE", "NOISE_STD", "NUM_DISTRACTORS",
    "OBJECT_SCALE", "SHAPE_NAMES", "SPLITS", "ShapesDataModule", "ShapesDataset", "box_to_mask",
    "dihedral_augment", "mask_to_box", "relabel_empty", "render_image", "render_split",
]
