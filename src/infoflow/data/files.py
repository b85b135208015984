"""Reading dataset files: folders that must exist and images decoded in full, each failure a `DataError`
naming the path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from infoflow.errors import DataError, MissingDataError


def require_dir(path: str | Path, what: str) -> Path:
    """`path` as a Path, or a `MissingDataError` naming it and what it should hold."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise MissingDataError(f"{path} does not exist or is not a directory (expected {what})")
    return path


def open_image(path: str | Path) -> Image.Image:
    """The fully decoded image at `path`; a corrupt, truncated or unreadable file is a DataError naming it."""
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"cannot read image {path}: {err} (corrupt, truncated or not an image file); "
                        "replace or remove it") from None


def to_8bit(image: Image.Image, path: str | Path = "") -> Image.Image:
    """8-bit image: 16/32-bit integer grayscale (modes ``I;16*``, ``I``) scaled from [0, 65535] to [0, 255]
    (PIL's own conversion would clip everything above 255 to white); float images are refused."""
    if image.mode.startswith("I;16") or image.mode == "I":
        values = np.asarray(image, dtype=np.float64)
        return Image.fromarray(np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8), mode="L")
    if image.mode == "F":
        raise DataError(f"image {path} holds floating-point pixels (mode F): save it as 8- or 16-bit")
    return image


def load_rgb(path: str | Path) -> Image.Image:
    """The image at `path` as 8-bit RGB (16-bit grayscale scaled, see `to_8bit`)."""
    return to_8bit(open_image(path), path).convert("RGB")
