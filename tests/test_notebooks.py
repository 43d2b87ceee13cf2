"""The notebooks in notebooks/: stored without outputs, and every cell runs.

Each tox environment executes its own backend's notebook (``RESNET_MULTI_TEST_BACKENDS``;
all of them when it is unset) and ``cross_framework.ipynb``, which compares whatever
backends import in the kernel and must include the selected ones. The kernel is this
interpreter's ipykernel, started in notebooks/ with ``RESNET_MULTI_NOTEBOOK_QUICK=1``
(training shrinks to a few steps) and with the ``resnet_multi`` this process imported
first on its path, so a test run from a checkout executes that checkout's package.
A cell that raises fails the test.
"""
import json
import os
import sys
from pathlib import Path

import pytest

try:
    import ipykernel  # noqa: F401  (the kernel the notebooks run in)
    import nbclient
    import nbformat
except ImportError as e:
    raise ImportError(f"{e.name} is not installed: the notebook tests need the test extra, "
                      f"pip install -e '.[test]'") from e

import resnet_multi
from cases import selected_backends
from resnet_multi.backend import BACKENDS, load_backend

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
CELL_TIMEOUT = 900  # seconds; a quick-mode notebook takes well under a minute


def notebook_files():
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def test_every_backend_has_a_notebook():
    names = {p.name for p in notebook_files()}
    missing = {f"resnet_{b}.ipynb" for b in BACKENDS} - names
    assert not missing and "cross_framework.ipynb" in names, sorted(missing)


@pytest.mark.parametrize("path", notebook_files(), ids=lambda p: p.name)
def test_stored_without_outputs(path):
    """One source of truth with readable diffs: no outputs, no execution counts."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    dirty = [i for i, cell in enumerate(nb["cells"]) if cell["cell_type"] == "code"
             and (cell.get("outputs") or cell.get("execution_count") is not None)]
    assert not dirty, f"{path.name}: cells {dirty} hold outputs; clear them before committing " \
                      f"(jupyter nbconvert --clear-output --inplace {path.name})"


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_backend_notebook_shows_its_conventions_table(backend):
    """Section 6 shows the generated table for this framework (the cell runs in the tests
    above), not a hand-copied one that could drift from the backend module."""
    nb = json.loads((NOTEBOOKS / f"resnet_{backend}.ipynb").read_text(encoding="utf-8"))
    code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    assert any(f'conventions.collect(["{backend}"])' in src and "format_table" in src for src in code), \
        f"resnet_{backend}.ipynb does not show conventions.collect([{backend!r}])"


def _kernel_env(tmp_path) -> dict:
    """Environment for a kernel that is this interpreter, importing this resnet_multi."""
    package_root = str(Path(resnet_multi.__file__).resolve().parent.parent)
    kernels = tmp_path / "jupyter" / "kernels" / "resnet-multi-test"
    kernels.mkdir(parents=True)
    # This interpreter, by absolute path: a "python3" kernelspec found on the Jupyter path
    # could name another Python.
    (kernels / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "resnet-multi test", "language": "python"}))
    env = dict(os.environ)
    env.update(
        JUPYTER_PATH=str(tmp_path / "jupyter"),
        PYTHONPATH=os.pathsep.join([package_root, *filter(None, [env.get("PYTHONPATH")])]),
        RESNET_MULTI_NOTEBOOK_QUICK="1",
        TMPDIR=str(tmp_path),  # the notebooks' run directories (tempfile.mkdtemp) go with the test's
        # what Jupyter draws with; headless, and plt.show() puts the figure in the output
        MPLBACKEND="module://matplotlib_inline.backend_inline",
    )
    return env


def execute(path: Path, tmp_path, monkeypatch, *, extra_cells=()):
    nb = nbformat.read(path, as_version=4)
    nb.cells.extend(nbformat.v4.new_code_cell(src) for src in extra_cells)
    env = _kernel_env(tmp_path)
    monkeypatch.setenv("JUPYTER_PATH", env["JUPYTER_PATH"])  # where this process looks the kernel up
    # the kernel's working directory is notebooks/, as when a reader opens the notebook there
    client = nbclient.NotebookClient(nb, kernel_name="resnet-multi-test", timeout=CELL_TIMEOUT,
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute(env=env)  # a cell that raises raises CellExecutionError, naming the cell
    return nb


def _framework_absent(backend: str) -> str | None:
    """Why ``backend`` cannot run here (its framework is not installed), or None."""
    try:
        load_backend(backend)
    except ImportError as e:
        return f"backend {backend} not installed: {e}"
    return None


@pytest.mark.parametrize("backend", selected_backends())
def test_backend_notebook_runs(backend, tmp_path, monkeypatch):
    reason = _framework_absent(backend)
    if reason:
        pytest.skip(reason)
    execute(NOTEBOOKS / f"resnet_{backend}.ipynb", tmp_path, monkeypatch)


def test_cross_framework_notebook_runs(tmp_path, monkeypatch):
    wanted = ["numpy"] + [b for b in selected_backends() if b != "numpy" and not _framework_absent(b)]
    # Not stored in the notebook: it compares what imports; here it must compare these.
    check = (f"missing = sorted(set({wanted!r}) - set(compared))\n"
             f"assert not missing, f'cross_framework.ipynb compared {{compared}}, not {{missing}}'")
    execute(NOTEBOOKS / "cross_framework.ipynb", tmp_path, monkeypatch, extra_cells=[check])
