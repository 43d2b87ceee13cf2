#!/usr/bin/env python3
"""Build the small Fashion-MNIST subset bundled in resnet_multi.

Picks 200 training and 50 test images per class with a seeded RNG from the
verified official files, and writes them as gzip IDX files (mtime=0, so the
output is byte-reproducible) into resnet_multi/datasets/fashion_mnist_subset/.
Prints the SHA-256 digests of the decompressed files for data.SUBSET_SHA256.

    python scripts/make_fashion_mnist_subset.py [--source DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import struct
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from resnet_multi import data  # noqa: E402

SEED = 20240601
TRAIN_PER_CLASS = 200
TEST_PER_CLASS = 50


def choose_stratified(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """``per_class`` indices of each class, drawn without replacement, in file order."""
    picks = [rng.choice(np.flatnonzero(labels == c), size=per_class, replace=False) for c in range(data.NUM_CLASSES)]
    # Sorting keeps the original (already class-mixed) order of the files.
    return np.sort(np.concatenate(picks))


def idx_images_bytes(images: np.ndarray) -> bytes:
    n, rows, cols = images.shape
    return struct.pack(">IIII", data.IMAGE_MAGIC, n, rows, cols) + images.astype(np.uint8).tobytes()


def idx_labels_bytes(labels: np.ndarray) -> bytes:
    return struct.pack(">II", data.LABEL_MAGIC, len(labels)) + labels.astype(np.uint8).tobytes()


def build_subset(source: Path | None, out_dir: Path, seed: int = SEED) -> dict[str, str]:
    """Write the four subset files into ``out_dir``; return {stem: sha256 of decompressed bytes}."""
    full = data.load_fashion_mnist(source, download=False, verify=True)
    rng = np.random.default_rng(seed)
    train = choose_stratified(full.train_labels, TRAIN_PER_CLASS, rng)
    test = choose_stratified(full.test_labels, TEST_PER_CLASS, rng)
    contents = {
        data.TRAIN_IMAGES: idx_images_bytes(full.train_images[train]),
        data.TRAIN_LABELS: idx_labels_bytes(full.train_labels[train]),
        data.TEST_IMAGES: idx_images_bytes(full.test_images[test]),
        data.TEST_LABELS: idx_labels_bytes(full.test_labels[test]),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    digests = {}
    for stem, raw in contents.items():
        # mtime=0 and no file name in the header: same bytes on every run.
        (out_dir / (stem + ".gz")).write_bytes(gzip.compress(raw, compresslevel=9, mtime=0))
        digests[stem] = hashlib.sha256(raw).hexdigest()
    return digests


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source", type=Path, default=None, help="folder with the official files (default: data.find_data_dir())"
    )
    parser.add_argument("--out", type=Path, default=data.SUBSET_DIR, help="output folder")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)

    digests = build_subset(args.source, args.out, args.seed)
    for stem, digest in digests.items():
        size = (args.out / (stem + ".gz")).stat().st_size
        print(f"{stem}.gz  {size:>8} bytes  sha256(decompressed)={digest}")
    if digests != data.SUBSET_SHA256:
        print("These differ from data.SUBSET_SHA256; update data.py with:", file=sys.stderr)
        names = {
            data.TRAIN_IMAGES: "TRAIN_IMAGES",
            data.TRAIN_LABELS: "TRAIN_LABELS",
            data.TEST_IMAGES: "TEST_IMAGES",
            data.TEST_LABELS: "TEST_LABELS",
        }
        for stem, digest in digests.items():
            print(f'    {names[stem]}: "{digest}",', file=sys.stderr)
        return 1
    print("Matches data.SUBSET_SHA256.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
