"""Calibration/validation data from a folder of images, with a declared preprocessing.

``--calibration DIR --image-size 224,224 --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 --layout NCHW [--bgr]``
Each image becomes one batch-1 feed for the model's single image input: RGB (or BGR), resized to H x W,
scaled to [0, 1], normalized by mean/std, laid out NCHW or NHWC. Needs Pillow.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnxopt.data import Feed, InputSpec
from onnxopt.errors import BadDataError, UsageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


@dataclass
class ImagePreprocess:
    """How images become model input. ``size`` is (H, W); None takes it from the model's static dims."""

    size: tuple[int, int] | None = None
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    layout: str = "NCHW"
    bgr: bool = False
    scale: float = 1.0 / 255.0

    def __post_init__(self) -> None:
        if self.layout not in ("NCHW", "NHWC"):
            raise UsageError(f"--layout must be NCHW or NHWC, got {self.layout!r}")
        if len(self.mean) not in (1, 3) or len(self.std) not in (1, 3):
            raise UsageError("--mean and --std take 1 or 3 comma-separated values")
        if any(s == 0 for s in self.std):
            raise UsageError("--std values must be non-zero")


def parse_floats(text: str, what: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"{what}: expected comma-separated numbers, got {text!r}") from None


def parse_size(text: str) -> tuple[int, int]:
    try:
        dims = [int(v) for v in text.replace("x", ",").split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"--image-size: expected H,W (e.g. 224,224), got {text!r}") from None
    if len(dims) == 1:
        dims = dims * 2
    if len(dims) != 2 or min(dims) <= 0:
        raise UsageError(f"--image-size: expected H,W with positive values, got {text!r}")
    return dims[0], dims[1]


class ImageFolderData:
    """Feeds made from the images in a folder (sorted by name), one image per feed."""

    def __init__(self, folder: str | os.PathLike, specs: Sequence[InputSpec], prep: ImagePreprocess):
        self.path = str(folder)
        root = Path(folder)
        if not root.is_dir():
            raise BadDataError(f"{root}: not a folder of images")
        self.files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not self.files:
            raise BadDataError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
        floats = [s for s in specs if s.dtype.kind == "f" and s.shape is not None and len(s.shape) == 4]
        if len(floats) != 1 or len(specs) != 1:
            names = ", ".join(s.describe() for s in specs)
            raise BadDataError(f"{root}: an image folder feeds models with exactly one 4-D float input; "
                               f"this model has {names}; use an .npz file instead", advice="")
        self.spec = floats[0]
        self.prep = prep
        self.size = prep.size or self._size_from_model()
        self.get(0)

    def _size_from_model(self) -> tuple[int, int]:
        shape = self.spec.shape or ()
        h, w = (shape[2], shape[3]) if self.prep.layout == "NCHW" else (shape[1], shape[2])
        if not (isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0):
            raise UsageError(f"input {self.spec.name!r} has dynamic height/width; give --image-size H,W", advice="")
        return h, w

    def __len__(self) -> int:
        return len(self.files)

    def get(self, i: int) -> Feed:
        try:
            from PIL import Image, UnidentifiedImageError
        except ImportError:
            raise UsageError("image folders need Pillow", advice="pip install pillow") from None
        path = self.files[i]
        try:
            with Image.open(path) as img:
                img = img.convert("RGB").resize((self.size[1], self.size[0]), Image.BILINEAR)
                arr = np.asarray(img, dtype=np.float32)
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise BadDataError(f"{path}: cannot read image ({exc})", advice="remove or replace that file") from None
        if self.prep.bgr:
            arr = arr[..., ::-1]
        arr = (arr * self.prep.scale - np.asarray(self.prep.mean, np.float32)) / np.asarray(self.prep.std, np.float32)
        if self.prep.layout == "NCHW":
            arr = arr.transpose(2, 0, 1)
        return {self.spec.name: np.ascontiguousarray(arr[None].astype(self.spec.dtype))}

    def __iter__(self) -> Iterator[Feed]:
        for i in range(len(self)):
            yield self.get(i)

    def subset(self, indices: Sequence[int]) -> list[Feed]:
        return [self.get(i) for i in indices]
