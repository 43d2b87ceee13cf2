"""Photos as a network's input, prepared as a weights file's metadata says (Pillow).

Two recipes, both read from the ``preprocess`` record (:data:`resnet_multi.validate.PREPROCESS`):

* a model zoo's (imported weights, which record ``interpolation``): the shorter side
  resized to ``resize`` and a centre ``crop`` (torchvision's ``Resize`` + ``CenterCrop``,
  which Pillow computes for it too), or a plain ``resize`` x ``resize`` without ``crop``;
  the channels in the recorded order (RGB, or Caffe's BGR); x = (pixel * scale - mean) / std
  per channel;
* the chapter's (weights trained here): grey, first made a Fashion-MNIST image (28 x 28),
  then resized as training resized the data set (:func:`resnet_multi.data.resize_bilinear`).

Then :func:`top_k` names the most likely classes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .data import FASHION_MNIST_CLASSES, IMAGE_SIDE, DataError, resize_bilinear
from .errors import InputError
from .files import input_problem
from .spec import ArchSpec


class ImageError(DataError):
    """An image file that cannot be read, or not fed to the network (the message names it)."""


def _pillow():
    try:
        from PIL import Image
    except ImportError:
        raise ImportError("reading images needs Pillow, which is not installed here: pip install pillow") from None
    return Image


def channel_order(preprocess: dict, spec: ArchSpec) -> str:
    """The channels the network takes: recorded, or grey / RGB from its input channels."""
    return preprocess.get("channels") or ("L" if spec.in_channels == 1 else "RGB")


def load(path, preprocess: dict, spec: ArchSpec) -> np.ndarray:
    """One image file as a (C, H, W) float32 input for ``spec``, prepared per ``preprocess``."""
    Image = _pillow()
    path = Path(path)
    problem = input_problem(path)
    if problem is not None:
        raise ImageError(f"image {path} {problem}; pass image files (JPEG, PNG, ...)")
    order = channel_order(preprocess, spec)
    if (1 if order == "L" else 3) != spec.in_channels:
        raise ImageError(f"cannot feed {order} images to {spec.name}, which takes {spec.in_channels} channel(s)")
    try:
        with Image.open(path) as image:
            image = image.convert("L" if order == "L" else "RGB")  # decodes all of it: a truncated file fails here
    except Image.DecompressionBombError as e:
        raise ImageError(f"{path}: {e}; resize it first") from None
    except (OSError, ValueError, SyntaxError) as e:  # UnidentifiedImageError is an OSError
        raise ImageError(
            f"{path} is not an image Pillow can read ({type(e).__name__}: {e}); pass JPEG, PNG or another image file"
        ) from None
    if "interpolation" not in preprocess:
        return _chapter(image, preprocess)
    return _zoo(image, preprocess, order)


_RESAMPLE = {"nearest": "NEAREST", "bilinear": "BILINEAR", "bicubic": "BICUBIC"}


def _zoo(image, preprocess: dict, order: str) -> np.ndarray:
    Image = _pillow()
    resample = getattr(Image.Resampling, _RESAMPLE[preprocess["interpolation"]])
    side = preprocess["resize"]
    w, h = image.size
    if "crop" in preprocess:
        # torchvision's Resize(int): the shorter side to ``side``, the longer in proportion
        size = (side, int(side * h / w)) if w <= h else (int(side * w / h), side)
        image = image.resize(size, resample)
        crop = preprocess["crop"]
        left, top = int(round((size[0] - crop) / 2.0)), int(round((size[1] - crop) / 2.0))
        image = image.crop((left, top, left + crop, top + crop))
    elif side is not None:
        image = image.resize((side, side), resample)
    x = np.asarray(image, dtype=np.float32)
    x = x[:, :, None] if x.ndim == 2 else x[:, :, ::-1] if order == "BGR" else x
    mean = np.asarray(preprocess["mean"], np.float32).reshape(-1)
    std = np.asarray(preprocess["std"], np.float32).reshape(-1)
    x = (x * np.float32(preprocess["scale"]) - mean) / std
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


def _chapter(image, preprocess: dict) -> np.ndarray:
    """As training prepares Fashion-MNIST: 28 x 28 grey pixels * scale, resized bilinearly."""
    Image = _pillow()
    if image.size != (IMAGE_SIDE, IMAGE_SIDE):
        image = image.resize((IMAGE_SIDE, IMAGE_SIDE), Image.Resampling.BILINEAR)
    x = np.asarray(image, dtype=np.float32)[None] / np.float32(1 / preprocess["scale"])  # as data.iterate_batches
    if preprocess["resize"] is not None:
        x = resize_bilinear(x, preprocess["resize"])
    mean = np.float32(np.mean(preprocess["mean"]))
    std = np.float32(np.mean(preprocess["std"]))
    return np.ascontiguousarray((x - mean) / std, dtype=np.float32)


def load_batch(paths, preprocess: dict, spec: ArchSpec) -> np.ndarray:
    """(N, C, H, W) float32 inputs from image files."""
    if not paths:
        raise InputError("no images given: pass one or more image files")
    return np.stack([load(p, preprocess, spec) for p in paths])


def class_names(classes, spec: ArchSpec) -> list[str]:
    """The name of each output: recorded in the weights file, Fashion-MNIST's for the
    chapter's 1-channel 10-class networks (which is what training here fits), else a number."""
    if classes is not None:
        return list(classes)
    if spec.in_channels == 1 and spec.num_classes == len(FASHION_MNIST_CLASSES):
        return list(FASHION_MNIST_CLASSES)
    return [f"class {i}" for i in range(spec.num_classes)]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def top_k(logits: np.ndarray, names: list[str], k: int = 5) -> list[list[tuple[int, str, float]]]:
    """For each row of logits, the ``k`` most likely classes: (index, name, probability)."""
    probs = softmax(np.asarray(logits))
    k = min(k, probs.shape[1])
    out = []
    for row in probs:
        best = np.argsort(-row, kind="stable")[:k]
        out.append([(int(i), names[i], float(row[i])) for i in best])
    return out
