"""Fashion-MNIST loading and batching, shared by every backend.

Framework-free: only the standard library, numpy and tqdm. Every backend
consumes the same numpy arrays from :func:`iterate_batches`, so the data path
is bit-identical across frameworks.

Where the data comes from, in order (see :func:`find_data_dir`):

1. an explicit ``data_dir`` argument;
2. the ``RESNET_MULTI_DATA`` environment variable;
3. the user cache ``$XDG_CACHE_HOME/resnet-multi/fashion-mnist`` (default
   ``~/.cache/...``);
4. ``/usr/share/datasets/fashion-mnist`` (Debian package
   ``dataset-fashion-mnist``);
5. otherwise a download from the canonical mirror into the cache.

Every file is structurally validated; the official files (and the bundled
subset) are also checked against SHA-256 digests of their decompressed bytes,
so Debian's recompressed ``.gz`` files verify the same as the originals.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import os
import sys
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import validate
from .errors import InputError
from .files import OutputError, check_output, input_problem

__all__ = [
    "DataError",
    "FASHION_MNIST_CLASSES",
    "Dataset",
    "load_fashion_mnist",
    "load_dataset",
    "find_data_dir",
    "download_fashion_mnist",
    "default_cache_dir",
    "read_idx_images",
    "read_idx_labels",
    "resize_bilinear",
    "resize_matrices",
    "iterate_batches",
    "batch_order",
    "num_batches",
    "preprocessing",
    "parse_augment",
    "augment_images",
]

FASHION_MNIST_CLASSES = (
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)

ENV_VAR = "RESNET_MULTI_DATA"
MIRROR_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# Module-level so tests can point them elsewhere.
SYSTEM_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
SUBSET_DIR = Path(__file__).resolve().parent / "datasets" / "fashion_mnist_subset"

# The four files, by role. Stored as ``<stem>.gz`` or uncompressed ``<stem>``.
TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"
FILE_STEMS = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)

# Published MD5s of the mirror's .gz files (only meaningful for downloads:
# Debian recompressed its copies, so their .gz bytes differ).
GZ_MD5 = {
    TRAIN_IMAGES: "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    TRAIN_LABELS: "25c81989df183df01b3e8a0aad5dffbe",
    TEST_IMAGES: "bef4ecab320f06d8554ea6380940ec79",
    TEST_LABELS: "bb300cfdad3c16e7a12a480ee83cd310",
}

# SHA-256 of the DECOMPRESSED official files, computed once from the Debian
# copies in /usr/share/datasets/fashion-mnist.
FULL_SHA256 = {
    TRAIN_IMAGES: "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    TRAIN_LABELS: "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    TEST_IMAGES: "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    TEST_LABELS: "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}

# SHA-256 of the DECOMPRESSED bundled subset (scripts/make_fashion_mnist_subset.py).
SUBSET_SHA256 = {
    TRAIN_IMAGES: "62c80f100fcdb8a594b0ad30992ff22a9cd0946f026fb3846135142a08ae0963",
    TRAIN_LABELS: "47fb43279d9ef9c771c2f2b379adacd4ac45880db050773af5e4d8105036fcd8",
    TEST_IMAGES: "03f6d7a63961dd4feb4138191a57fb240ac3e6194b2f85c95389b9f9da210859",
    TEST_LABELS: "88398b7b9c2714fdc99dcd01d17e01b1facc4aafd00b0c445cea3ca5f35f5823",
}

IMAGE_MAGIC, LABEL_MAGIC = validate.IDX_IMAGES[0], validate.IDX_LABELS[0]  # the schema's (resnet_multi.validate)
IMAGE_SIDE = 28
NUM_CLASSES = len(FASHION_MNIST_CLASSES)
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 16

_HOW_TO_GET_DATA = (
    "To get Fashion-MNIST, either\n"
    "  * install the Debian package:  sudo apt install dataset-fashion-mnist\n"
    f"  * or download {', '.join(s + '.gz' for s in FILE_STEMS)}\n"
    f"    from {MIRROR_URL} into a folder and pass <<data_dir>> FOLDER\n"
    f"    (or set {ENV_VAR}=FOLDER)."
)

# A message's fixes in the words of its reader: a Python caller passes arguments, a user of
# the command line passes flags (which have no verify=False).
_WORDS = {
    "api": {"<<data_dir>> FOLDER": "data_dir=FOLDER", "<<data_dir>>": "data_dir", "<<own files>>": "pass verify=False"},
    "cli": {
        "<<data_dir>>": "--data-dir",
        "<<own files>>": (
            "the commands read only the official files: load yours in Python with "
            "resnet_multi.data.load_fashion_mnist(FOLDER, verify=False)"
        ),
    },
}


def _words(template: str, reader: str) -> str:
    for token, words in _WORDS[reader].items():
        template = template.replace(token, words)
    return template


class DataError(ValueError):
    """A data file is missing, corrupt, or not what it claims to be. ``str()`` gives the
    fixes as a Python caller makes them (``data_dir=FOLDER``); :attr:`for_command_line`
    as a user of ``resnet-multi`` does (``--data-dir FOLDER``)."""

    def __init__(self, message: str):
        self.template = message
        super().__init__(_words(message, "api"))

    @property
    def for_command_line(self) -> str:
        return _words(self.template, "cli")


@dataclass(frozen=True, eq=False)  # eq=False: comparing arrays with == is ambiguous
class Dataset:
    """Train/test arrays: images (N, 28, 28) uint8, labels (N,) int64."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str

    def __repr__(self) -> str:
        return f"Dataset(train={self.train_images.shape}, test={self.test_images.shape}, source={self.source!r})"


# --------------------------------------------------------------------------
# Locating the files
# --------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/resnet-multi/fashion-mnist`` (``~/.cache`` by default)."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    # The XDG spec says relative paths are invalid and must be ignored.
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "resnet-multi" / "fashion-mnist"


def _file_in(folder: Path, stem: str) -> Path | None:
    """The ``.gz`` or uncompressed copy of ``stem`` in ``folder``, if any."""
    for name in (stem + ".gz", stem):
        candidate = folder / name
        if candidate.is_file():
            return candidate
    return None


def _missing_files(folder: Path) -> list[str]:
    return [stem + ".gz" for stem in FILE_STEMS if _file_in(folder, stem) is None]


def _require_complete(folder: Path, origin: str) -> Path:
    """Return ``folder`` or raise naming what is missing (no silent fall-through)."""
    if not folder.is_dir():
        raise DataError(f"{origin} {folder} is not a directory.\n{_HOW_TO_GET_DATA}")
    missing = _missing_files(folder)
    if missing:
        raise DataError(
            f"{origin} {folder} lacks {', '.join(missing)} "
            f"(each may also be stored uncompressed, without .gz).\n{_HOW_TO_GET_DATA}"
        )
    return folder


def _search() -> Path | None:
    """First complete folder among env var, cache and system dir; None if none."""
    env = os.environ.get(ENV_VAR, "")
    if env:
        # A user who sets the variable means it; a wrong value is an error.
        return _require_complete(Path(env).expanduser(), f"{ENV_VAR}=")
    for folder in (default_cache_dir(), SYSTEM_DATA_DIR):
        if folder.is_dir() and not _missing_files(folder):
            return folder
    return None


def _not_found_message(then: str = "") -> str:
    """Where the data was looked for, ``then`` (what happened next), and how to get it: once."""
    return (
        f"Fashion-MNIST not found: {ENV_VAR} is not set, and neither "
        f"{default_cache_dir()} nor {SYSTEM_DATA_DIR} holds the four files.\n"
        f"{then + chr(10) if then else ''}{_HOW_TO_GET_DATA}"
    )


def find_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The folder holding the four files, by the module's search order (no download)."""
    if data_dir is not None:
        return _require_complete(Path(data_dir).expanduser(), "<<data_dir>>")
    found = _search()
    if found is None:
        raise DataError(_not_found_message())
    return found


# --------------------------------------------------------------------------
# Downloading
# --------------------------------------------------------------------------


def download_fashion_mnist(dest_dir: str | os.PathLike) -> Path:
    """Download the four ``.gz`` files into ``dest_dir``, verifying their MD5s.

    Files already present are kept (they are verified when loaded). Each
    download goes to a temp file in ``dest_dir`` and is moved into place only
    after its checksum matches, so a failure never leaves a partial file.
    """
    try:
        return _download_all(dest_dir)
    except DataError as exc:
        raise DataError(f"{exc.template}\n{_HOW_TO_GET_DATA}") from exc


def _download_all(dest_dir) -> Path:
    """download_fashion_mnist's work; its errors say what failed, without how to get the data."""
    dest = Path(dest_dir).expanduser()
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create download folder {dest}: {exc}.") from exc
    for stem in FILE_STEMS:
        if _file_in(dest, stem) is None:
            _download_one(MIRROR_URL + stem + ".gz", dest / (stem + ".gz"), GZ_MD5[stem])
    return dest


def _download_one(url: str, target: Path, expected_md5: str) -> None:
    try:
        check_output(target, "download target")  # the rename below must not replace a link or a device
    except OutputError as exc:
        raise DataError(f"{exc}.") from None
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    tmp = Path(tmp_name)
    moved = False
    try:
        with os.fdopen(fd, "wb") as out:
            actual_md5 = _stream_to(url, out, target.name)
        if actual_md5 != expected_md5:
            raise DataError(
                f"downloaded {url} has MD5 {actual_md5}, expected {expected_md5}: the download "
                f"is corrupt or the mirror changed; nothing was saved to {target.parent}. "
                f"Try again later."
            )
        os.replace(tmp, target)
        moved = True
    except (urllib.error.URLError, OSError) as exc:  # URLError/timeouts are OSErrors
        raise DataError(f"could not download {url}: {exc}.") from exc
    finally:
        if not moved:
            tmp.unlink(missing_ok=True)


def _stream_to(url: str, out, label: str) -> str:
    """Copy ``url`` into the open file ``out`` with a progress bar; return the MD5."""
    md5 = hashlib.md5(usedforsecurity=False)
    with urllib.request.urlopen(url, timeout=60) as response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        with tqdm(total=total, unit="B", unit_scale=True, desc=label, file=sys.stderr) as bar:
            while chunk := response.read(_CHUNK):
                md5.update(chunk)
                out.write(chunk)
                bar.update(len(chunk))
    return md5.hexdigest()


# --------------------------------------------------------------------------
# Reading and validating IDX files
# --------------------------------------------------------------------------


def _fix_hint(path: Path) -> str:
    """How to repair a bad file, depending on where it lives."""
    resolved = path.resolve()
    if resolved.is_relative_to(SUBSET_DIR):
        return "The subset ships with resnet-multi: reinstall the package."
    if resolved.is_relative_to(default_cache_dir().resolve()):
        return f"Delete {path}; it is downloaded again on the next load."
    if resolved.is_relative_to(SYSTEM_DATA_DIR.resolve()):
        return (
            f"Reinstall it (sudo apt install --reinstall dataset-fashion-mnist) or set "
            f"{ENV_VAR} to a folder with good copies."
        )
    return (
        f"Delete or replace it with the official file from {MIRROR_URL}, or pass "
        f"<<data_dir>> (or set {ENV_VAR}) to a folder with good copies."
    )


def _error(path: Path, problem: str) -> DataError:
    return DataError(f"{path}: {problem}. {_fix_hint(path)}")


def _read_bytes(path: Path) -> bytes:
    """File contents, gunzipped when they start with the gzip magic bytes; at most
    :data:`resnet_multi.validate.MAX_IDX_BYTES` either way (a gzip bomb stops there)."""
    limit = validate.MAX_IDX_BYTES
    problem = input_problem(path)
    if problem is not None:
        raise _error(path, f"the path {problem}")
    try:
        with open(path, "rb") as f:
            raw = f.read(limit + 1)
    except OSError as exc:
        raise _error(path, f"cannot read the file ({exc.strerror or exc})") from exc
    if raw[:2] != _GZIP_MAGIC:
        if len(raw) > limit:
            raise _error(path, f"larger than {limit:,} bytes, which no Fashion-MNIST file is")
        return raw
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as stream:
            data = stream.read(limit + 1)  # decompresses no further than that
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise _error(path, f"corrupt or truncated gzip data ({exc})") from exc
    if len(data) > limit:
        raise _error(path, f"decompresses to more than {limit:,} bytes, which no Fashion-MNIST file does")
    return data


def _parse_images(data: bytes, path: Path) -> np.ndarray:
    try:
        count = validate.idx_count(data, "images", side=IMAGE_SIDE, classes=NUM_CLASSES)
    except validate.SchemaError as e:
        raise _error(path, str(e)) from None
    return np.frombuffer(data, np.uint8, offset=16).reshape(count, IMAGE_SIDE, IMAGE_SIDE).copy()


def _parse_labels(data: bytes, path: Path) -> np.ndarray:
    try:
        validate.idx_count(data, "labels", side=IMAGE_SIDE, classes=NUM_CLASSES)
    except validate.SchemaError as e:
        raise _error(path, str(e)) from None
    return np.frombuffer(data, np.uint8, offset=8).astype(np.int64)


def _check_digest(data: bytes, path: Path, expected: str) -> None:
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise _error(
            path,
            f"decompressed contents have SHA-256 {actual}, expected {expected}: "
            f"the file is corrupt or not the official data (for your own IDX "
            f"files <<own files>>)",
        )


def read_idx_images(path: str | os.PathLike, expected_sha256: str | None = None) -> np.ndarray:
    """Read an IDX image file (gzip or raw) as (N, 28, 28) uint8."""
    path = Path(path)
    data = _read_bytes(path)
    images = _parse_images(data, path)
    if expected_sha256 is not None:
        _check_digest(data, path, expected_sha256)
    return images


def read_idx_labels(path: str | os.PathLike, expected_sha256: str | None = None) -> np.ndarray:
    """Read an IDX label file (gzip or raw) as (N,) int64 in 0..9."""
    path = Path(path)
    data = _read_bytes(path)
    labels = _parse_labels(data, path)
    if expected_sha256 is not None:
        _check_digest(data, path, expected_sha256)
    return labels


def _read_split(
    folder: Path, images_stem: str, labels_stem: str, digests: dict[str, str] | None
) -> tuple[np.ndarray, np.ndarray]:
    images_path = _file_in(folder, images_stem)
    labels_path = _file_in(folder, labels_stem)
    if images_path is None or labels_path is None:
        raise DataError(f"{folder} lacks {images_stem}(.gz) or {labels_stem}(.gz).\n{_HOW_TO_GET_DATA}")
    images = read_idx_images(images_path, None if digests is None else digests[images_stem])
    labels = read_idx_labels(labels_path, None if digests is None else digests[labels_stem])
    if len(images) != len(labels):
        raise DataError(
            f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} "
            f"labels: the pair does not belong together. Replace both files with matching "
            f"official copies (from {MIRROR_URL}, or pass <<data_dir>> or set {ENV_VAR})."
        )
    return images, labels


def _load_folder(folder: Path, digests: dict[str, str] | None, source: str) -> Dataset:
    train_images, train_labels = _read_split(folder, TRAIN_IMAGES, TRAIN_LABELS, digests)
    test_images, test_labels = _read_split(folder, TEST_IMAGES, TEST_LABELS, digests)
    return Dataset(train_images, train_labels, test_images, test_labels, source)


def load_fashion_mnist(
    data_dir: str | os.PathLike | None = None, *, subset: bool = False, download: bool = True, verify: bool = True
) -> Dataset:
    """Load Fashion-MNIST (or, with ``subset=True``, the bundled 2,000/500 subset).

    ``verify=False`` skips only the SHA-256 check against the official data (for
    custom IDX files); structural validation always runs.
    """
    if subset:
        if data_dir is not None:
            raise InputError("subset=True loads the bundled subset; do not pass data_dir with it")
        return _load_folder(
            SUBSET_DIR, SUBSET_SHA256 if verify else None, f"Fashion-MNIST subset (bundled, {SUBSET_DIR})"
        )
    if data_dir is not None:
        folder = find_data_dir(data_dir)
    else:
        folder = _search() or _download_or_explain(download)
    return _load_folder(folder, FULL_SHA256 if verify else None, f"Fashion-MNIST ({folder})")


def _download_or_explain(download: bool) -> Path:
    if not download:
        raise DataError(_not_found_message("(download=False, so nothing was downloaded.)"))
    cache = default_cache_dir()
    print(f"Fashion-MNIST not found locally; downloading it into {cache}", file=sys.stderr)
    try:
        return _download_all(cache)
    except DataError as exc:
        raise DataError(_not_found_message(f"The automatic download failed: {exc.template}")) from exc


def load_dataset(*, subset: bool, data_dir=None, limit: int | None = None, instead: str = "--subset") -> Dataset:
    """The data set a command runs on: the bundled subset, or the full set (found on disk or
    in ``data_dir``), with only the first ``limit`` images of each split (smoke runs). Where
    the full data is missing, the error also names ``instead``: the flag that runs on the
    subset that comes with the package."""
    if subset and data_dir is not None:
        raise InputError(
            "--data-dir reads the full dataset; drop --subset (or the quick preset's subset) with --no-subset"
        )
    try:
        dataset = load_fashion_mnist(subset=True) if subset else load_fashion_mnist(data_dir)
    except DataError as e:
        if subset:
            raise
        raise DataError(
            f"{e.template}\nOr use the 2,000/500-image subset that comes with resnet-multi (no download): {instead}"
        ) from e
    if limit is not None:
        dataset = Dataset(
            dataset.train_images[:limit],
            dataset.train_labels[:limit],
            dataset.test_images[:limit],
            dataset.test_labels[:limit],
            f"{dataset.source}, first {limit}",
        )
    return dataset


# --------------------------------------------------------------------------
# Resizing and batching
# --------------------------------------------------------------------------


def _interp_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(lo, hi, w_lo, w_hi): output ``i`` is ``w_lo[i] * in[lo[i]] + w_hi[i] * in[hi[i]]``,
    bilinear with half-pixel centres (align_corners=False); weights float32."""
    scale = in_size / out_size
    dst = np.arange(out_size, dtype=np.float64)
    # Same formula as PyTorch's area_pixel_compute_source_index: negative
    # source positions clamp to 0 and the right neighbour clamps at the edge.
    src = np.maximum((dst + 0.5) * scale - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    frac = src - lo
    edge = lo == hi  # one neighbour: its weight is the whole 1, not (1 - frac) + frac rounded apart
    w_lo = np.where(edge, 1.0, 1.0 - frac).astype(np.float32)
    w_hi = np.where(edge, 0.0, frac).astype(np.float32)
    return lo, hi, w_lo, w_hi


@functools.lru_cache(maxsize=32)
def _taps(in_size: int, out_size: int):
    taps = _interp_taps(in_size, out_size)
    for array in taps:
        array.flags.writeable = False  # shared through the cache
    return taps


def _interp_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) float32: the two taps of :func:`_interp_taps` as a matrix's rows."""
    lo, hi, w_lo, w_hi = _taps(in_size, out_size)
    matrix = np.zeros((out_size, in_size), dtype=np.float32)
    rows = np.arange(out_size)
    matrix[rows, lo] = w_lo
    matrix[rows, hi] += w_hi  # lo == hi at the edge: w_hi is 0 there
    matrix.flags.writeable = False
    return matrix


def resize_bilinear(images: np.ndarray, size: int) -> np.ndarray:
    """Resize (N, H, W) float32 images to (N, size, size), bilinear, align_corners=False.

    Rows first, then columns; each output is ``w_lo * a + w_hi * b`` in float32, two
    products and one sum, each rounded once. Element-wise arithmetic, not a matrix product:
    a BLAS may fuse a multiply-add or reorder a sum, and then two NumPy builds would give
    batches a rounding apart, and traces from two environments would not be comparable."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size <= 0:
        raise InputError(f"size must be a positive integer, got {size!r}")
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 3:
        raise InputError(f"images must have shape (N, H, W), got {images.shape}")
    lo, hi, w_lo, w_hi = _taps(images.shape[1], int(size))
    rows = images[:, lo, :] * w_lo[:, None] + images[:, hi, :] * w_hi[:, None]
    lo, hi, w_lo, w_hi = _taps(images.shape[2], int(size))
    return np.ascontiguousarray(rows[:, :, lo] * w_lo + rows[:, :, hi] * w_hi, dtype=np.float32)


@functools.lru_cache(maxsize=16)
def resize_matrices(height: int, width: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols): :func:`resize_bilinear` as ``rows @ image @ cols.T``, float32 (read-only,
    shared), for a backend that resizes on its device with matrix products; those agree with
    :func:`resize_bilinear` to a rounding (a device may fuse the multiply-add)."""
    return _interp_matrix(int(height), int(size)), _interp_matrix(int(width), int(size))


def _check_batch_size(batch_size) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")


def num_batches(n: int, batch_size: int) -> int:
    """Batches per epoch when the last partial batch is kept."""
    _check_batch_size(batch_size)
    if n < 0:
        raise InputError(f"n must be >= 0, got {n}")
    return -(-n // batch_size)


def iterate_batches(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int | None = None,
    epoch: int = 0,
    resize: int | None = None,
    augment: str | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(x, y)``: x float32 (B, 1, S, S) in [0, 1], y int64 (B,).

    With ``shuffle=True`` the order comes from ``default_rng([seed, epoch])``, so
    the same seed and epoch give bit-identical batches on every call (seed=None
    draws fresh OS entropy instead). The last partial batch is kept.
    ``augment`` (see :func:`parse_augment`, e.g. ``"flip+crop2"``) flips and crops the
    28x28 images before they are resized, drawn from ``default_rng([seed, epoch, 1])``:
    the same for every backend, and the batch order is the one without augmentation.
    """
    # Validate now, not at the first next(), so mistakes surface at the call site.
    _check_batch_size(batch_size)
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise InputError(f"images must be (N, H, W) uint8, got {images.shape} {images.dtype}")
    if labels.shape != (len(images),):
        raise InputError(f"labels must have shape ({len(images)},), got {labels.shape}")
    if resize is not None and (isinstance(resize, bool) or not isinstance(resize, (int, np.integer)) or resize <= 0):
        raise InputError(f"resize must be None or a positive integer, got {resize!r}")
    flip, pad = parse_augment(augment)
    order = batch_order(len(images), shuffle=shuffle, seed=seed, epoch=epoch)
    draws = None
    if flip or pad:
        draws = augment_draws(len(images), flip=flip, pad=pad, seed=seed, epoch=epoch)
    return _batches(images, labels, order, int(batch_size), resize, draws, pad)


# ---- augmentation: NumPy on the uint8 images, so every backend trains on the same pixels ----
AUGMENT_STREAM = 1  # default_rng([seed, epoch, AUGMENT_STREAM]): apart from the batch order's stream
MAX_CROP_PAD = 8


def parse_augment(augment: str | None) -> tuple[bool, int]:
    """(flip, pad) of an augmentation spec: ``None`` or ``"none"``: nothing; ``"flip"``:
    random horizontal flips; ``"cropP"``: a random 28x28 crop of the image zero-padded by
    P pixels on each side; both joined by ``+`` (``"flip+crop2"``)."""
    if augment is None or augment == "none":
        return False, 0
    if not isinstance(augment, str):
        raise InputError(f"augment must be a string such as 'flip+crop2', got {type(augment).__name__}")
    flip, pad, seen = False, 0, set()
    for part in augment.split("+"):
        if part in seen:
            raise InputError(f"augment {augment!r} names {part!r} twice")
        seen.add(part)
        if part == "flip":
            flip = True
        elif part.startswith("crop") and part[4:].isdigit() and 1 <= int(part[4:]) <= MAX_CROP_PAD:
            if any(p.startswith("crop") for p in seen - {part}):
                raise InputError(f"augment {augment!r} names two crops; give one, e.g. crop2")
            pad = int(part[4:])
        else:
            raise InputError(
                f"unknown augmentation {part!r} in {augment!r}: use flip, cropP (P = padding, 1 to "
                f"{MAX_CROP_PAD}) or both joined by '+', e.g. flip+crop2; 'none' for no augmentation"
            )
    return flip, pad


def canonical_augment(augment: str | None) -> str | None:
    """One spelling per augmentation ("crop2+flip" -> "flip+crop2"; "none" -> None)."""
    flip, pad = parse_augment(augment)
    parts = (["flip"] if flip else []) + ([f"crop{pad}"] if pad else [])
    return "+".join(parts) or None


def augment_draws(n: int, *, flip: bool, pad: int, seed: int | None, epoch: int) -> dict:
    """An epoch's random choices, one per image in the epoch's order: ``flips`` (bool),
    ``offsets`` (row, column of the crop within the padded image)."""
    entropy = None if seed is None else [int(seed), int(epoch), AUGMENT_STREAM]
    rng = np.random.default_rng(entropy)
    flips = rng.random(n) < 0.5 if flip else np.zeros(n, bool)
    offsets = rng.integers(0, 2 * pad + 1, size=(n, 2)) if pad else np.zeros((n, 2), np.int64)
    return {"flips": flips, "offsets": offsets}


def augment_images(images: np.ndarray, flips: np.ndarray, offsets: np.ndarray, pad: int) -> np.ndarray:
    """(N, H, W) images, each flipped left-right where ``flips`` says, then cropped back to
    H x W from the image zero-padded by ``pad`` at ``offsets`` (row, column; ``pad, pad``
    is the image itself). Exact on uint8: pixels are moved, never interpolated."""
    images = np.asarray(images)
    out = np.where(np.asarray(flips, bool)[:, None, None], images[:, :, ::-1], images)
    if pad:
        n, h, w = out.shape
        padded = np.pad(out, ((0, 0), (pad, pad), (pad, pad)))
        rows = offsets[:, 0, None] + np.arange(h)  # (N, H)
        cols = offsets[:, 1, None] + np.arange(w)  # (N, W)
        out = padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
    return np.ascontiguousarray(out)


def batch_order(n: int, *, shuffle: bool, seed: int | None = None, epoch: int = 0) -> np.ndarray:
    """The order :func:`iterate_batches` visits ``n`` images in (a backend that builds
    batches on its device takes the same order from here)."""
    if shuffle:
        entropy = None if seed is None else [int(seed), int(epoch)]
        return np.random.default_rng(entropy).permutation(n)
    return np.arange(n)


# What _batches does to a pixel: x = (pixel * scale - mean) / std, after resizing.
# Recorded in every weights file that training saves (see preprocessing()).
SCALE, MEAN, STD = 1 / 255, 0.0, 1.0


def preprocessing(resize: int | None) -> dict:
    """How :func:`iterate_batches` turns images into a network's input, as recorded
    in a weights file's metadata: ``resize`` (None keeps 28x28), scale, mean, std."""
    return {"resize": None if resize is None else int(resize), "scale": SCALE, "mean": MEAN, "std": STD}


def _batches(images, labels, order, batch_size, resize, draws=None, pad=0):
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        chosen = images[idx]
        if draws is not None:
            where = slice(start, start + batch_size)
            chosen = augment_images(chosen, draws["flips"][where], draws["offsets"][where], pad)
        x = chosen.astype(np.float32) / np.float32(1 / SCALE)
        if resize is not None:
            x = resize_bilinear(x, resize)
        yield np.ascontiguousarray(x[:, None]), labels[idx].astype(np.int64)
