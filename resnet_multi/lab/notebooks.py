"""Lab notebooks: the exercise, a cell for the student's code, a check cell. Framework-free;
written with nbformat (``pip install 'resnet-multi[lab]'``).

    python -m resnet_multi.lab.notebooks notebooks/lab          # the committed ones (and otter's tests)
    python -m resnet_multi.lab.notebooks DIR --exercise bottleneck --framework tf

The student's cell carries the tag ``student`` (and the id ``student``); the check cell runs
:func:`resnet_multi.lab.check`, which prints the report. The solutions are the package's
own classes: ``from resnet_multi.torch import Residual`` in the student's cell passes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .. import frameworks
from ..files import atomic_write_bytes, check_output
from . import exercises

# the committed notebooks: the chapter's block, in every framework
COMMITTED = [("residual", fw) for fw in frameworks.NAMES]

IMPORTS = {
    "numpy": "import numpy as np\n\nfrom resnet_multi.numpy import BatchNorm2d, Conv2d, Layer, ReLU",
    "torch": "import torch\nfrom torch import nn\nfrom torch.nn import functional as F",
    "tf": "import tensorflow as tf",
    "mxnet": "from mxnet import np, npx\nfrom mxnet.gluon import nn\n\nnpx.set_np()",
    "paddle": "import paddle\nfrom paddle import nn\nfrom paddle.nn import functional as F",
    "mindspore": "import mindspore as ms\nfrom mindspore import nn, ops",
    "jax": "import jax\nfrom flax import linen as nn\nfrom jax import numpy as jnp",
}
_TODO = "        # your code: conv1, bn1, conv2, bn2, and conv3 (the 1x1 convolution) when use_1x1conv\n"
SKELETONS = {
    "numpy": (
        "class Residual(Layer):\n"
        '    """The chapter\'s residual block, forward and backward, from the layers of\n'
        '    resnet_multi.numpy (each with its own forward and backward)."""\n\n'
        "    def __init__(self, input_channels, num_channels, use_1x1conv=False, strides=1):\n"
        "        super().__init__()\n" + _TODO + "\n"
        "    def forward(self, X):\n        # your code\n        return X\n\n"
        "    def backward(self, dY):\n        # your code: fill each layer's grads, return dX\n        return dY\n"
    ),
    "torch": (
        "class Residual(nn.Module):\n"
        "    def __init__(self, input_channels, num_channels, use_1x1conv=False, strides=1):\n"
        "        super().__init__()\n" + _TODO + "\n"
        "    def forward(self, X):\n        # your code\n        return X\n"
    ),
    "tf": (
        "class Residual(tf.keras.Model):\n"
        "    def __init__(self, num_channels, use_1x1conv=False, strides=1):\n"
        "        super().__init__()\n" + _TODO + "\n"
        "    def call(self, X):\n        # your code\n        return X\n"
    ),
    "mxnet": (
        "class Residual(nn.Block):\n"
        "    def __init__(self, num_channels, use_1x1conv=False, strides=1, **kwargs):\n"
        "        super().__init__(**kwargs)\n" + _TODO + "\n"
        "    def forward(self, X):\n        # your code\n        return X\n"
    ),
    "paddle": (
        "class Residual(nn.Layer):\n"
        "    def __init__(self, input_channels, num_channels, use_1x1conv=False, strides=1):\n"
        "        super().__init__()\n" + _TODO + "\n"
        "    def forward(self, X):\n        # your code\n        return X\n"
    ),
    "mindspore": (
        "class Residual(nn.Cell):\n"
        "    def __init__(self, input_channels, num_channels, use_1x1conv=False, strides=1):\n"
        "        super().__init__()\n" + _TODO + "\n"
        "    def construct(self, X):\n        # your code\n        return X\n"
    ),
    "jax": (
        "class Residual(nn.Module):\n"
        "    num_channels: int\n    use_1x1conv: bool = False\n    strides: tuple = (1, 1)\n"
        "    training: bool = True\n\n"
        "    def setup(self):\n"
        "        pass  # your code: conv1, bn1, conv2, bn2, and conv3 (the 1x1 convolution) when use_1x1conv\n\n"
        "    def __call__(self, X):\n        # your code\n        return X\n"
    ),
}
NOTES = {
    "numpy": "Build it from the reference's layers (`Conv2d`, `BatchNorm2d`, `ReLU`), and write `backward` "
    "too: it takes the gradient of the output, fills every layer's `grads` and returns the gradient of "
    "the input (each layer's `backward` does its part).",
    "torch": "PyTorch's `nn.BatchNorm2d` already has the spec's epsilon and momentum.",
    "tf": "Keras' defaults are not the spec's: pass `momentum=0.9, epsilon=1e-5` to "
    "`BatchNormalization`, and pad explicitly (`padding='same'` pads asymmetrically at stride 2).",
    "mxnet": "Gluon's `nn.BatchNorm()` already has the spec's epsilon and momentum (0.9 is the old "
    "value's share there).",
    "paddle": "Pass `momentum=0.9` to `nn.BatchNorm2D` (the old value's share, as the chapter does).",
    "mindspore": "MindSpore's `nn.Conv2d` has no bias and pads 'same' unless told: pass "
    "`pad_mode='pad', padding=1, has_bias=True`.",
    "jax": "Flax's `nn.BatchNorm` keeps 99% of the old statistics unless told: pass `momentum=0.9`; pad "
    "explicitly with `padding=((1, 1), (1, 1))` (`'same'` pads asymmetrically at stride 2).",
}


def _nbformat():
    try:
        import nbformat
    except ImportError as e:
        raise ImportError("lab notebooks need nbformat: pip install 'resnet-multi[lab]'") from e
    return nbformat


def notebook(exercise: str = "residual", framework: str = "torch"):
    """The lab notebook for one exercise in one framework (an nbformat NotebookNode)."""
    nbformat = _nbformat()
    ex = exercises.get(exercise)
    title = frameworks.get(framework).title
    name = ex.names[0]
    intro = (
        f"# Lab: {ex.title} ({title})\n\n{ex.text}\n\n"
        f"Signature: `{exercises.signature(ex, framework)}`.\n\n"
        + (NOTES.get(framework, "") + "\n\n" if exercise == "residual" else "")
        + "Write your code in the cell tagged `student`, then run the check below it: it builds your "
        f"`{name}` over a grid of cases, loads the same weights into it and into the NumPy reference, and "
        "compares shapes, parameter counts, outputs, gradients and BatchNorm statistics. Where the numbers "
        "differ, a hint names the mistake that explains them."
    )
    v4 = nbformat.v4
    cells = [v4.new_markdown_cell(intro), v4.new_code_cell(IMPORTS[framework])]
    if exercise == "residual":
        student, checked = SKELETONS[framework], name
    else:  # no skeleton: the check looks the names up among the notebook's objects
        student, checked = f"# your code: {exercises.signature(ex, framework)}\n", "globals()"
    call = f'lab.check({checked}, exercise="{exercise}", framework="{framework}")'
    check = f"from resnet_multi import lab\n\nresult = {call}"
    cells.append(v4.new_code_cell(student, metadata={"tags": ["student"]}))
    cells.append(v4.new_code_cell(check))
    for cell, cell_id in zip(cells, ("exercise", "imports", "student", "check")):
        cell["id"] = cell_id  # stable ids: the same notebook every time
    nb = v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def text(nb) -> str:
    """A notebook as it is stored: nbformat's JSON, keys sorted, one space indent, no outputs."""
    return json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def filename(exercise: str, framework: str) -> str:
    return f"{exercise}_{framework}.ipynb"


def write(directory, pairs=COMMITTED) -> list[Path]:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for exercise, framework in pairs:
        path = check_output(directory / filename(exercise, framework), "notebook")
        atomic_write_bytes(path, text(notebook(exercise, framework)).encode())
        paths.append(path)
    return paths


def stale(directory) -> list[str]:
    """The committed notebooks in ``directory`` that differ from what this module writes."""
    problems = []
    for exercise, framework in COMMITTED:
        path = Path(directory) / filename(exercise, framework)
        if not path.exists():
            problems.append(f"{path}: missing")
        elif path.read_text(encoding="utf-8") != text(notebook(exercise, framework)):
            problems.append(f"{path}: differs from what resnet_multi.lab.notebooks writes")
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m resnet_multi.lab.notebooks", description=__doc__.split("\n")[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--exercise", choices=list(exercises.EXERCISES), help="(default: the committed notebooks)")
    parser.add_argument("--framework", choices=list(frameworks.NAMES), default="torch")
    args = parser.parse_args(argv)
    pairs = [(args.exercise, args.framework)] if args.exercise else COMMITTED
    paths = write(args.directory, pairs)
    if not args.exercise:  # the otter tests beside them, for every exercise, any framework
        from .report import write_otter_tests

        paths += write_otter_tests(Path(args.directory) / "otter")
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
