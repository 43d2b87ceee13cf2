"""The notebooks in notebooks/: generated from docs/book/resnet.md, stored without
outputs, and every cell runs.

``python docs/tools/book.py notebooks`` writes them from the chapter's single source; a
notebook that differs from what the source generates fails here (the source changed, or
one of the package's classes it includes did, and nobody regenerated the notebooks).

Each tox environment executes its own backend's notebook (``RESNET_MULTI_TEST_BACKENDS``;
all of them when it is unset) and ``cross_framework.ipynb``, which compares whatever
backends import in the kernel and must include the selected ones. The kernel is this
interpreter's ipykernel, started in notebooks/ with ``RESNET_MULTI_NOTEBOOK_QUICK=1``
(training shrinks to a few steps) and with the ``resnet_multi`` this process imported
first on its path, so a test run from a checkout executes that checkout's package.
A cell that raises fails the test. With ``RESNET_MULTI_ARTIFACTS`` set, each executed
notebook is written to ``$RESNET_MULTI_ARTIFACTS/executed/<name>.ipynb``, from which the
documentation's chapter page takes the outputs (``book.py page --executed``).
"""

import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

try:
    import ipykernel  # noqa: F401  (the kernel the notebooks run in)
    import nbclient
    import nbformat
except ImportError as e:
    raise ImportError(
        f"{e.name} is not installed: the notebook tests need the test extra, pip install -e '.[test]'"
    ) from e

from cases import selected_backends

import resnet_multi
from resnet_multi.backend import BACKENDS, load_backend

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
BOOK = ROOT / "docs" / "tools" / "book.py"
CELL_TIMEOUT = 900  # seconds; a quick-mode notebook takes well under a minute


def load_book():
    """docs/tools/book.py, the generator (a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("book", BOOK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def notebook_files():
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def test_every_backend_has_a_notebook():
    names = {p.name for p in notebook_files()}
    missing = {f"resnet_{b}.ipynb" for b in BACKENDS} - names
    assert not missing and "cross_framework.ipynb" in names, sorted(missing)


def test_notebooks_are_generated_from_the_book():
    """What ``python docs/tools/book.py check`` checks: the committed notebooks are exactly
    what docs/book/resnet.md and the package's included classes generate."""
    problems = load_book().stale()
    assert not problems, "\n".join(problems) + "\nregenerate them: python docs/tools/book.py notebooks"


def test_the_check_names_a_changed_or_missing_notebook(tmp_path):
    book = load_book()
    for path in notebook_files():
        shutil.copy(path, tmp_path / path.name)
    assert book.stale(tmp_path) == []
    nb = json.loads((tmp_path / "resnet_torch.ipynb").read_text(encoding="utf-8"))
    nb["cells"][-1]["source"] = ["edited by hand"]
    (tmp_path / "resnet_torch.ipynb").write_text(json.dumps(nb), encoding="utf-8")
    (tmp_path / "resnet_jax.ipynb").unlink()
    problems = book.stale(tmp_path)
    assert len(problems) == 2, problems
    assert any("resnet_torch.ipynb: differs" in p for p in problems), problems
    assert any("resnet_jax.ipynb: missing" in p for p in problems), problems


def test_cell_ids_are_the_books_steps():
    """The page matches executed cells to the source by id: the same step has the same id
    in every framework's notebook, and ids are unique within a notebook."""
    ids = {}
    for path in notebook_files():
        nb = nbformat.read(path, as_version=4)
        own = [c.id for c in nb.cells]
        assert len(own) == len(set(own)), path.name
        ids[path.stem] = own
    torch_ids, jax_ids = ids["resnet_torch"], ids["resnet_jax"]
    assert "5-training-on-fashion-mnist-3" in torch_ids and "5-training-on-fashion-mnist-3" in jax_ids


PNG_1x1 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="


def test_page_puts_each_frameworks_outputs_in_its_tab(tmp_path):
    """``book.py page``: code in synced framework tabs, with the outputs of the matching
    executed cell (text, images beside the page); a framework not executed says so."""
    book = load_book()
    nb = nbformat.read(NOTEBOOKS / "resnet_torch.ipynb", as_version=4)
    cells = {c.id: c for c in nb.cells}
    cells["residual-networks-resnet-1"].outputs = [
        nbformat.v4.new_output("stream", name="stdout", text="printed by the torch kernel\n")
    ]
    cells["6-the-training-curves-1"].outputs = [nbformat.v4.new_output("display_data", data={"image/png": PNG_1x1})]
    cells["7-evaluating-and-predictions-1"].source += "\n# edited after the run"
    cells["7-evaluating-and-predictions-1"].outputs = [
        nbformat.v4.new_output("stream", name="stdout", text="from older code\n")
    ]
    (tmp_path / "executed").mkdir()
    nbformat.write(nb, tmp_path / "executed" / "resnet_torch.ipynb")
    text = book.page(tmp_path / "executed", tmp_path / "site" / "chapter.md")
    assert text == (tmp_path / "site" / "chapter.md").read_text(encoding="utf-8")
    assert text.count(":sync-group: framework") > 20 and ":sync: torch" in text and ":sync: mindspore" in text
    assert "printed by the torch kernel" in text
    images = list((tmp_path / "site" / "chapter_files").glob("torch-*.png"))
    assert len(images) == 1 and f"chapter_files/{images[0].name}" in text
    assert "from older code" not in text and "ran another version of this code" in text
    assert "Not executed for this build: there is no executed `resnet_jax.ipynb`" in text
    assert "\n# One network, every framework" not in text and "\n## One network, every framework" in text


@pytest.mark.parametrize("path", notebook_files(), ids=lambda p: p.name)
def test_stored_without_outputs(path):
    """One source of truth with readable diffs: no outputs, no execution counts."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    dirty = [
        i
        for i, cell in enumerate(nb["cells"])
        if cell["cell_type"] == "code" and (cell.get("outputs") or cell.get("execution_count") is not None)
    ]
    assert not dirty, f"{path.name}: cells {dirty} hold outputs; regenerate it: python docs/tools/book.py notebooks"


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_backend_notebook_shows_its_conventions_table(backend):
    """Section 8 shows the generated table for this framework (the cell runs in the tests
    below), not a hand-copied one that could drift from the backend module."""
    nb = json.loads((NOTEBOOKS / f"resnet_{backend}.ipynb").read_text(encoding="utf-8"))
    code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    assert any(f'conventions.collect(["{backend}"])' in src and "format_table" in src for src in code), (
        f"resnet_{backend}.ipynb does not show conventions.collect([{backend!r}])"
    )


def _kernel_env(tmp_path) -> dict:
    """Environment for a kernel that is this interpreter, importing this resnet_multi."""
    package_root = str(Path(resnet_multi.__file__).resolve().parent.parent)
    kernels = tmp_path / "jupyter" / "kernels" / "resnet-multi-test"
    kernels.mkdir(parents=True)
    # This interpreter, by absolute path: a "python3" kernelspec found on the Jupyter path
    # could name another Python.
    (kernels / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "resnet-multi test",
                "language": "python",
            }
        )
    )
    env = dict(os.environ)
    env.update(
        JUPYTER_PATH=str(tmp_path / "jupyter"),
        PYTHONPATH=os.pathsep.join([package_root, *filter(None, [env.get("PYTHONPATH")])]),
        RESNET_MULTI_NOTEBOOK_QUICK="1",
        # no traces there: cross_framework.ipynb records its own, for the backends in this kernel
        RESNET_MULTI_TRACES=str(tmp_path / "traces"),
        TMPDIR=str(tmp_path),  # whatever a notebook leaves in a temporary directory goes with the test's
        # what Jupyter draws with; headless, and plt.show() puts the figure in the output
        MPLBACKEND="module://matplotlib_inline.backend_inline",
    )
    return env


def _keep(nb, name: str) -> None:
    """Write the executed notebook where the documentation's build takes it from, atomically."""
    folder = os.environ.get("RESNET_MULTI_ARTIFACTS")
    if not folder:
        return
    target = Path(folder) / "executed" / f"{name}.ipynb"
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            nbformat.write(nb, f)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would keep it from other readers
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def execute(path: Path, tmp_path, monkeypatch, *, extra_cells=()):
    nb = nbformat.read(path, as_version=4)
    stored = len(nb.cells)
    nb.cells.extend(nbformat.v4.new_code_cell(src) for src in extra_cells)
    env = _kernel_env(tmp_path)
    monkeypatch.setenv("JUPYTER_PATH", env["JUPYTER_PATH"])  # where this process looks the kernel up
    # the kernel's working directory is notebooks/, as when a reader opens the notebook there
    client = nbclient.NotebookClient(
        nb, kernel_name="resnet-multi-test", timeout=CELL_TIMEOUT, resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute(env=env)  # a cell that raises raises CellExecutionError, naming the cell
    skipped = [c.id for c in nb.cells if c.cell_type == "code" and c.execution_count is None]
    assert not skipped, f"{path.name}: cells {skipped} did not run"
    del nb.cells[stored:]  # the test's own checks are not the notebook's
    _keep(nb, path.stem)
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
    check = (
        f"missing = sorted(set({wanted!r}) - set(compared))\n"
        f"assert not missing, f'cross_framework.ipynb compared {{compared}}, not {{missing}}'"
    )
    execute(NOTEBOOKS / "cross_framework.ipynb", tmp_path, monkeypatch, extra_cells=[check])
