"""Importing a model zoo's pretrained ResNet into canonical weights.

``resnet-multi import --from ZOO FILE --arch ARCH --output W.safetensors`` reads a
checkpoint as its zoo publishes it, renames and transposes every tensor to the canonical
names and layouts (:mod:`resnet_multi.weights`) and saves it with the metadata that
``predict`` needs: the architecture, ImageNet's class names, the zoo's own preprocessing
and where the weights come from (file name and SHA-256).

* ``torchvision`` / ``timm``: a ``state_dict`` saved by ``torch.save`` (read with
  ``torch.load(weights_only=True)``, which unpickles tensors and containers only) or a
  ``.safetensors`` file. timm's ``resnet18`` ... ``resnet152`` use torchvision's names.
* ``keras``: ``keras.applications.ResNet50``'s weights: Keras 3's ``.weights.h5`` or
  ``.keras`` archive, or the legacy HDF5 file that ``weights="imagenet"`` downloads.
  Keras' ResNet50 is the paper's v1: import it as ``--arch keras-resnet50``.
* ``paddle``: a ``.pdparams`` file (``paddle.save(state_dict)``), a pickle read with an
  unpickler that builds NumPy arrays and nothing else.

Nothing is written unless every tensor of the architecture is found with its shape.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import warnings
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from . import validate
from . import weights as canonical
from .files import check_output, input_problem
from .spec import ARCHS, ArchSpec, get_arch

ZOOS = ("torchvision", "timm", "keras", "paddle")


class ZooError(canonical.WeightsError):
    """A checkpoint that cannot be imported: the message names the file, the key and the fix."""


# ---- what each zoo's pretrained ResNets expect ------------------------------------------
_IMAGENET_MEAN, _IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]

PREPROCESS = {
    # torchvision's ResNet*_Weights.IMAGENET1K_V1 transforms: Resize(256), CenterCrop(224)
    "torchvision": {
        "resize": 256,
        "crop": 224,
        "interpolation": "bilinear",
        "channels": "RGB",
        "scale": 1 / 255,
        "mean": _IMAGENET_MEAN,
        "std": _IMAGENET_STD,
    },
    # timm's pretrained_cfg of resnet18 ... resnet152 (the a1_in1k tags): crop_pct 0.95,
    # so the shorter side goes to floor(224 / 0.95) = 235, bicubic
    "timm": {
        "resize": 235,
        "crop": 224,
        "interpolation": "bicubic",
        "channels": "RGB",
        "scale": 1 / 255,
        "mean": _IMAGENET_MEAN,
        "std": _IMAGENET_STD,
    },
    # keras.applications.resnet50.preprocess_input ("caffe"): BGR, the mean of each channel
    # subtracted, no scaling; the applications' example loads 224x224 with load_img's nearest
    "keras": {
        "resize": 224,
        "interpolation": "nearest",
        "channels": "BGR",
        "scale": 1.0,
        "mean": [103.939, 116.779, 123.68],
        "std": [1.0, 1.0, 1.0],
    },
    # paddle.vision's ImageNet evaluation: Resize(256), CenterCrop(224), ImageNet mean/std
    "paddle": {
        "resize": 256,
        "crop": 224,
        "interpolation": "bilinear",
        "channels": "RGB",
        "scale": 1 / 255,
        "mean": _IMAGENET_MEAN,
        "std": _IMAGENET_STD,
    },
}

_SUFFIXES = {
    "torchvision": ".pth or .pt (torch.save of a state_dict) or .safetensors",
    "timm": ".pth or .bin (torch.save of a state_dict) or .safetensors",
    "keras": ".weights.h5, .keras or .h5",
    "paddle": ".pdparams",
}


def imagenet_classes() -> list[str]:
    """ImageNet-1k's 1,000 class names in output order (torchvision's list, shipped with the
    package: see resnet_multi/datasets/imagenet_classes.LICENSE)."""
    text = resources.files("resnet_multi").joinpath("datasets/imagenet_classes.txt").read_text(encoding="utf-8")
    return text.splitlines()


def archs_for(zoo: str) -> list[str]:
    """The architectures of the spec table that ``zoo``'s layout can hold."""
    return [name for name, spec in ARCHS.items() if _fits_zoo(spec, zoo)]


def _fits_zoo(spec: ArchSpec, zoo: str) -> bool:
    if spec.preact or spec.shortcut != "conv_bn":
        return False
    if zoo == "keras":  # Keras' ResNet50/101/152: v1 bottlenecks, a bias on every conv
        return spec.block == "bottleneck" and spec.conv_bias and spec.stride_on == "1x1"
    return not spec.conv_bias and spec.stride_on == "3x3"


# ---- canonical name -> the zoo's name ---------------------------------------------------
def _torch_name(name: str) -> str:
    """``stages.1.0.shortcut.conv.weight`` -> ``layer2.0.downsample.0.weight`` (torchvision, timm)."""
    parts = name.split(".")
    if parts[0] == "stem":
        return f"{ {'conv': 'conv1', 'bn': 'bn1'}[parts[1]] }.{parts[2]}"
    if parts[0] == "head":
        return f"fc.{parts[2]}"
    stage, block, *rest = parts[1:]
    if rest[0] == "shortcut":
        rest = ["downsample", "0" if rest[1] == "conv" else "1", rest[2]]
    return ".".join([f"layer{int(stage) + 1}", block, *rest])


_PADDLE_LEAVES = {"running_mean": "_mean", "running_var": "_variance"}


def _paddle_name(name: str) -> str:
    layer, _, leaf = _torch_name(name).rpartition(".")
    return f"{layer}.{_PADDLE_LEAVES.get(leaf, leaf)}"


# The order of each Keras layer's variables: Conv2D/Dense kernel, bias; BatchNormalization
# gamma, beta, moving mean, moving variance.
_KERAS_VAR = {"weight": 0, "bias": 1, "running_mean": 2, "running_var": 3}


def _keras_layer(layer: str) -> str:
    """``stages.1.0.conv1`` -> ``conv3_block1_1_conv``, as keras.applications names it."""
    parts = layer.split(".")
    if parts[0] == "stem":
        return f"conv1_{parts[1]}"
    if parts[0] == "head":
        return "predictions"
    stage, block, *rest = parts[1:]
    if rest[0] == "shortcut":
        k, kind = "0", rest[1]
    else:
        k, kind = rest[0][-1], rest[0][:-1]
    return f"conv{int(stage) + 2}_block{int(block) + 1}_{k}_{kind}"


def _keras_name(name: str) -> str:
    """``stem.conv.weight`` -> ``conv1_conv/0``: the layer and the index of the variable."""
    layer, _, leaf = name.rpartition(".")
    return f"{_keras_layer(layer)}/{_KERAS_VAR[leaf]}"


_NAMES = {"torchvision": _torch_name, "timm": _torch_name, "keras": _keras_name, "paddle": _paddle_name}


def _layout(zoo: str, name: str, role: str):
    """(the zoo's shape from the canonical one, the zoo's array -> canonical)."""
    if zoo == "keras" and role == "conv":  # HWIO
        return (lambda s: (s[2], s[3], s[1], s[0])), (lambda a: a.transpose(3, 2, 0, 1))
    if zoo in ("keras", "paddle") and role == "fc":  # Dense / Linear: (in, out)
        return (lambda s: (s[1], s[0])), (lambda a: a.T)
    return (lambda s: s), (lambda a: a)


# Entries a zoo's file holds beside the weights, which the network does not need.
def _ignored(zoo: str, key: str) -> bool:
    if zoo in ("torchvision", "timm"):
        return key.endswith(".num_batches_tracked")
    if zoo == "paddle":
        return key == "StructuredToParameterName@@"
    return False


# ---- reading the files -------------------------------------------------------------------
def _sniff(path: Path) -> str:
    """What kind of file ``path`` is, from its first bytes: hdf5, zip, pickle, safetensors or unknown."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "hdf5"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5:  # PROTO 2..5
        return "pickle"
    if len(head) > 8 and head[8:9] == b"{":
        return "safetensors"
    return "unknown"


_KINDS = {
    "torchvision": ("zip", "pickle", "safetensors"),
    "timm": ("zip", "pickle", "safetensors"),
    "keras": ("hdf5", "zip"),
    "paddle": ("pickle",),
}
_KIND_NAMES = {
    "hdf5": "an HDF5 file (Keras' .h5 / .weights.h5: --from keras)",
    "zip": "a zip archive (a PyTorch .pth: --from torchvision or timm; a .keras archive: --from keras)",
    "pickle": "a pickle (a PaddlePaddle .pdparams: --from paddle; an old-style torch.save file: --from torchvision)",
    "safetensors": "a safetensors file (--from torchvision or timm)",
}


def _error(path: Path, zoo: str, problem: str) -> ZooError:
    return ZooError(f"{path}: {problem}")


def _unreadable(path: Path, zoo: str, e: BaseException, what: str) -> ZooError:
    return _error(
        path,
        zoo,
        f"cannot be read as {what} ({type(e).__name__}: {e}); it may be truncated or of another "
        f"zoo: --from {zoo} reads {_SUFFIXES[zoo]}; download it again, or pass the --from it came from",
    )


def read_checkpoint(path, zoo: str, spec: ArchSpec | None = None) -> dict[str, np.ndarray]:
    """The tensors of a zoo's checkpoint under the zoo's own names (Keras': ``layer/index``),
    as NumPy arrays; ZooError if the file is not one that ``zoo`` publishes. A Keras 3
    ``.weights.h5`` names layers by class and order only: ``spec`` (default: Keras' ResNet50)
    gives the order of keras.applications' layers."""
    if zoo not in ZOOS:
        raise ZooError(f"unknown zoo {zoo!r}; choose one of {', '.join(ZOOS)}")
    path = Path(path)
    problem = input_problem(path)
    if problem is not None:
        raise ZooError(f"checkpoint {path} {problem}; pass the {zoo} checkpoint file ({_SUFFIXES[zoo]})")
    kind = _sniff(path)
    if kind not in _KINDS[zoo]:
        found = _KIND_NAMES.get(kind, "none of the formats a model zoo publishes")
        raise _error(path, zoo, f"is {found}, not a {zoo} checkpoint ({_SUFFIXES[zoo]})")
    if zoo == "keras":
        return _read_keras(path, kind, _keras_default_order(spec or ARCHS["keras-resnet50"]))
    if zoo == "paddle":
        return _read_paddle(path)
    if kind == "safetensors":
        return _read_safetensors(path, zoo)
    return _read_torch(path, zoo)


def _read_safetensors(path: Path, zoo: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # safetensors' own SafetensorError, or a dtype NumPy lacks (bfloat16)
        raise _unreadable(path, zoo, e, "a safetensors file") from None


def _read_torch(path: Path, zoo: str) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise _error(
            path,
            zoo,
            "is a torch.save file, and reading one needs torch, which is not installed here: "
            "install torch, or run in the torch environment (tox -e torch)",
        ) from None
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise _error(
            path,
            zoo,
            f"torch.load(weights_only=True) refuses it: it holds Python objects other than tensors "
            f"({first}); resnet-multi never unpickles arbitrary objects: save the model's state_dict "
            f"alone (torch.save(model.state_dict(), path)) or as .safetensors",
        ) from None
    except Exception as e:  # torch raises RuntimeError for a damaged zip, EOFError for a short pickle
        raise _unreadable(path, zoo, e, "a PyTorch checkpoint") from None
    # Training checkpoints wrap the state_dict; published weights are the state_dict itself.
    if isinstance(state, dict) and not any(isinstance(v, torch.Tensor) for v in state.values()):
        for key in ("state_dict", "model", "state_dict_ema"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict):
        raise _error(path, zoo, f"holds a {type(state).__name__}, not a state_dict (a dict of tensors)")
    out = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise _error(path, zoo, f"{key!r} is a {type(value).__name__}, not a tensor: pass a state_dict")
        value = value.detach().cpu()
        out[str(key)] = (value.float() if value.is_floating_point() else value).numpy()
    return out


# Only what NumPy's own pickling of an array calls: ndarray.__reduce__ names these.
_PADDLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
}


class RefusedPickle(pickle.UnpicklingError):
    """A pickle that names a callable other than NumPy's array reconstruction."""


class ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings, numbers and NumPy arrays, and refuses every other
    global a pickle names (a pickle can call any function it names: os.system included)."""

    def find_class(self, module, name):
        if (module, name) not in _PADDLE_GLOBALS:
            raise RefusedPickle(
                f"it names {module}.{name}, and only NumPy arrays are read from a pickle "
                f"(a pickle can run any function it names)"
            )
        with warnings.catch_warnings():  # numpy.core is numpy._core's deprecated alias in NumPy 2
            warnings.simplefilter("ignore", DeprecationWarning)
            return super().find_class(module, name)

    def persistent_load(self, pid):
        raise RefusedPickle("it refers to persistent objects, which a .pdparams file does not hold")


def _read_paddle(path: Path) -> dict[str, np.ndarray]:
    try:
        with open(path, "rb") as f:
            state = ArraysOnlyUnpickler(f).load()
    except RefusedPickle as e:
        raise _error(
            path, "paddle", f"refused: {e}; a .pdparams written by paddle.save(state_dict) holds arrays"
        ) from None
    except Exception as e:  # EOFError, UnpicklingError, ValueError: a truncated or damaged pickle
        raise _unreadable(path, "paddle", e, "a PaddlePaddle .pdparams pickle") from None
    if not isinstance(state, dict):
        raise _error(path, "paddle", f"holds a {type(state).__name__}, not a state_dict (a dict of arrays)")
    out = {}
    for key, value in state.items():
        if _ignored("paddle", str(key)):
            continue
        if not isinstance(value, np.ndarray):
            raise _error(path, "paddle", f"{key!r} is a {type(value).__name__}, not an array: pass a state_dict")
        out[str(key)] = value
    return out


# Keras 3 names each layer of a .weights.h5 after its class, in the model's layer order
# (conv2d, conv2d_1, ...): the class names of the layers that hold weights.
_KERAS_CLASSES = {"Conv2D": "conv2d", "BatchNormalization": "batch_normalization", "Dense": "dense"}


def _read_keras(path: Path, kind: str, order: list[tuple[str, str]]) -> dict[str, np.ndarray]:
    try:
        import h5py
    except ImportError:
        raise _error(path, "keras", "reading Keras weights needs h5py: pip install h5py") from None
    try:
        if kind == "zip":
            with zipfile.ZipFile(path) as z:
                names = set(z.namelist())
                if not {"config.json", "model.weights.h5"} <= names:
                    raise _error(
                        path,
                        "keras",
                        "is a zip archive without a .keras file's config.json and model.weights.h5 "
                        "(a PyTorch .pth is a zip too: --from torchvision or timm)",
                    )
                config = validate.parse_json(z.read("config.json"), f"{path}:config.json")
                order = _keras_config_order(path, config)
                data = io.BytesIO(z.read("model.weights.h5"))
            with h5py.File(data, "r") as f:
                return _keras_vars(path, f, order)
        with h5py.File(path, "r") as f:
            return _keras_vars(path, f, order)
    except ZooError:
        raise
    except validate.SchemaError as e:
        raise _error(path, "keras", f"config.json: {e}") from None
    except Exception as e:  # h5py's OSError for a truncated file, zipfile.BadZipFile
        raise _unreadable(path, "keras", e, "Keras weights") from None


def _keras_config_order(path: Path, config) -> list[tuple[str, str]]:
    """(class name, layer name) of each layer of a .keras archive's model, in order."""
    try:
        layers = config["config"]["layers"]
        return [(layer["class_name"], layer["config"]["name"]) for layer in layers]
    except (KeyError, TypeError) as e:
        raise _error(path, "keras", f"config.json does not describe a functional model (no {e})") from None


def _keras_default_order(spec: ArchSpec) -> list[tuple[str, str]]:
    """The order in which keras.applications' ResNet lists its layers with weights: in a
    block with a projection, the shortcut's conv comes after the second conv, its BN after
    the third conv."""
    out = [("Conv2D", "conv1_conv"), ("BatchNormalization", "conv1_bn")]
    for i, stage in enumerate(spec.stages):
        for j, block in enumerate(stage.blocks):
            name = f"conv{i + 2}_block{j + 1}_"
            seq = ["1_conv", "1_bn", "2_conv", "2_bn", "0_conv", "3_conv", "0_bn", "3_bn"]
            if not block.projection:
                seq = [s for s in seq if not s.startswith("0_")]
            out += [("Conv2D" if s.endswith("conv") else "BatchNormalization", name + s) for s in seq]
    return out + [("Dense", "predictions")]


def _keras_vars(path: Path, f, order) -> dict[str, np.ndarray]:
    out = {}
    if "layers" in f and "layer_names" not in f.attrs:  # Keras 3: layers/<class name>[_k]/vars/<index>
        counts: dict[str, int] = {}
        layer_names = {}
        for class_name, name in order:
            snake = _KERAS_CLASSES.get(class_name)
            if snake is None:
                continue
            k = counts.get(snake, 0)
            counts[snake] = k + 1
            layer_names[f"{snake}_{k}" if k else snake] = name
        for stored, group in f["layers"].items():
            if "vars" not in group or not len(group["vars"]):
                continue  # layers without weights: padding, activations, pooling
            name = layer_names.get(stored, f"[{stored}]")
            for index, value in group["vars"].items():
                out[f"{name}/{index}"] = np.asarray(value)
        return out
    root = f["model_weights"] if "model_weights" in f else f  # a whole model saved by Keras 2
    if "layer_names" not in root.attrs:
        raise _error(path, "keras", "is an HDF5 file without Keras' layers (neither layers/ nor layer_names)")
    for layer in root.attrs["layer_names"]:
        layer = layer.decode() if isinstance(layer, bytes) else str(layer)
        group = root[layer]
        for index, weight in enumerate(group.attrs.get("weight_names", [])):
            weight = weight.decode() if isinstance(weight, bytes) else str(weight)
            out[f"{layer}/{index}"] = np.asarray(group[weight])
    return out


# ---- the import --------------------------------------------------------------------------
@dataclass(frozen=True)
class Imported:
    """Canonical weights and the metadata they are saved with."""

    spec: ArchSpec
    weights: dict[str, np.ndarray]
    preprocess: dict
    classes: list[str] | None
    source: dict


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _shown(items: list[str]) -> str:
    return ", ".join(items[:8]) + (f", ... ({len(items)} in all)" if len(items) > 8 else "")


def _mismatches(zoo: str, spec: ArchSpec, tensors: dict[str, np.ndarray]):
    """(missing, unexpected, mis-shaped) zoo keys for ``spec``."""
    name_of = _NAMES[zoo]
    expected = {}
    for t in canonical.tensor_specs(spec):
        zoo_shape, _ = _layout(zoo, t.name, t.role)
        expected[name_of(t.name)] = tuple(zoo_shape(t.shape))
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected and not _ignored(zoo, k)]
    misshaped = [
        f"{k}: expected {expected[k]}, found {tuple(tensors[k].shape)}"
        for k in expected
        if k in tensors and tuple(tensors[k].shape) != expected[k]
    ]
    return missing, unexpected, misshaped


def convert(tensors: dict[str, np.ndarray], zoo: str, spec: ArchSpec, *, source: str = "checkpoint"):
    """A zoo's tensors (its names and layouts) as canonical weights for ``spec``; ZooError
    naming every missing, unexpected and mis-shaped key, and the architectures it would fit."""
    missing, unexpected, misshaped = _mismatches(zoo, spec, tensors)
    if missing or unexpected or misshaped:
        problems = [
            f"{label}: {_shown(items)}"
            for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped))
            if items
        ]
        fits = [
            name for name in archs_for(zoo) if name != spec.name and not any(_mismatches(zoo, ARCHS[name], tensors))
        ]
        hint = (
            f"it fits --arch {' / '.join(fits)}"
            if fits
            else f"pass the architecture it was saved from (--from {zoo} imports {', '.join(archs_for(zoo))})"
        )
        raise ZooError(f"{source} does not hold {zoo}'s {spec.name}: " + "; ".join(problems) + f". {hint}")
    name_of = _NAMES[zoo]
    out = {}
    for t in canonical.tensor_specs(spec):
        key = name_of(t.name)
        value = tensors[key]
        if not np.issubdtype(value.dtype, np.floating):
            raise ZooError(f"{source}: {key} holds {value.dtype} numbers, not floating point ones")
        _, to_canonical = _layout(zoo, t.name, t.role)
        out[t.name] = np.ascontiguousarray(to_canonical(value), dtype=np.float32)
    return out


def import_weights(zoo: str, path, arch: str | ArchSpec) -> Imported:
    """Read ``path`` as ``zoo`` publishes it and convert it for ``arch``."""
    if zoo not in ZOOS:
        raise ZooError(f"unknown zoo {zoo!r}; choose one of {', '.join(ZOOS)}")
    spec = get_arch(arch)
    if not _fits_zoo(spec, zoo):
        raise ZooError(
            f"{zoo} has no {spec.name}: its ResNets are laid out as {', '.join(archs_for(zoo))}; "
            f"pass one of those as --arch"
        )
    tensors = read_checkpoint(path, zoo, spec)
    weights = convert(tensors, zoo, spec, source=str(path))
    bad = validate.bad_tensors(weights)
    if bad:
        raise ZooError(f"{path} holds values no trained network has: {validate.describe(bad)}")
    classes = imagenet_classes() if spec.num_classes == 1000 else None
    source = {"zoo": zoo, "file": Path(path).name, "sha256": _sha256(Path(path))}
    return Imported(spec, weights, dict(PREPROCESS[zoo]), classes, source)


def import_file(zoo: str, path, arch: str | ArchSpec, output) -> Path:
    """Import ``path`` and save it to ``output`` (atomically, with its metadata); nothing is
    written if anything is wrong. The output path is checked before the checkpoint is read."""
    output = check_output(output, "--output")
    imported = import_weights(zoo, path, arch)
    return canonical.save_weights(
        output,
        imported.weights,
        imported.spec,
        preprocess=imported.preprocess,
        classes=imported.classes,
        source=imported.source,
    )


def describe(path) -> str:
    """One line on what was imported, for the command line."""
    meta = canonical.read_metadata(path)
    source = meta.source or {}
    return (
        f"{source.get('zoo', '?')} {meta.arch.name} from {source.get('file', '?')} -> {path} "
        f"({len(meta.classes or ())} class names, input {json.dumps(meta.preprocess)})"
    )
