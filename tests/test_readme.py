"""The README's code, run: every command and printed output it quotes is checked here.

Conventions for README.md's fenced blocks (the test reads them in order):

- A ```python block is run (a fresh namespace, this interpreter). If the next fenced
  block is a plain ``` block (no language), that is its expected output: what the
  block prints must equal it exactly, line by line (trailing spaces ignored). A block
  that imports a framework that is not installed here is skipped, naming it; each
  framework's tox environment runs its own blocks, and every environment runs the
  NumPy ones.
- A ```console block holds ``$ command`` lines, each followed by its expected
  output. The commands are cheap and are all run here (``resnet-multi`` and
  ``python`` mean this interpreter's, in the repository root, with ``COLUMNS=80``
  so that ``--help`` wraps as quoted). In the output, a line that is just ``...``
  stands for any number of lines, and ``...`` inside a line for any text.
- A ```bash block holds commands for the reader (installs, training, tox). Every
  ``resnet-multi`` command in it must parse; the cheap ones (``backends``,
  ``summary``, ``--help``) are also run and must succeed. Every ``tox -e ENV``
  must name tox.ini's environments. If the next fenced block is a plain ``` block, it is
  sample output from a run that takes minutes and whose figures depend on the
  machine and thread count: its lines must have the program's format (the same
  text once every number is blanked), checked against a tiny real run.
- A `resnet-multi ...` code span in the prose must parse too (one that is just
  `resnet-multi SUBCOMMAND` must name a subcommand that exists).
- Anywhere in the README (blocks, tables, prose), every ``pkg==version`` pin of a
  package that tox.ini pins must be tox.ini's version (``tensorflow-cpu``,
  ``tensorflow[and-cuda]``, ``mxnet-cu112`` and ``paddlepaddle-gpu`` count as
  their framework), and every framework tox.ini pins must appear.
"""

from __future__ import annotations

import argparse
import ast
import configparser
import contextlib
import importlib.util
import io
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from resnet_multi.cli import UsageError, build_parser, main

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

# import name of each framework, as a README block or `from resnet_multi import X` names it
FRAMEWORK_OF = {
    "torch": "torch",
    "tensorflow": "tensorflow",
    "tf": "tensorflow",
    "mxnet": "mxnet",
    "paddle": "paddle",
    "mindspore": "mindspore",
    "keras": "tensorflow",
    "jax": "jax",
    "flax": "jax",
}
CHEAP_SUBCOMMANDS = {"backends", "summary"}
# The quick preset shrunk to seconds on the NumPy reference, for the format of `train`'s lines.
TINY_TRAIN = [
    "train",
    "--backend",
    "numpy",
    "--preset",
    "quick",
    "--width",
    "8",
    "--epochs",
    "1",
    "--batch-size",
    "32",
    "--limit",
    "32",
    "--no-progress",
]


@dataclass
class Block:
    lang: str
    text: str
    line: int  # 1-based line of the opening fence
    output: Block | None = None  # the plain block that follows, if any

    @property
    def id(self) -> str:
        return f"{self.lang}-line{self.line}"


def read_blocks(text: str) -> list[Block]:
    """The README's fenced blocks, each with the plain block that follows it attached."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = re.match(r"^```(\S*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        start, body = i, []
        i += 1
        while i < len(lines) and lines[i].rstrip() != "```":
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise AssertionError(f"README.md line {start + 1}: unclosed ``` block")
        blocks.append(Block(m.group(1), "\n".join(body) + "\n", start + 1))
        i += 1
    for block, after in zip(blocks, blocks[1:]):
        if block.lang and not after.lang:
            block.output = after
    return blocks


BLOCKS = read_blocks(README.read_text(encoding="utf-8"))


def blocks(lang: str) -> list:
    return [pytest.param(b, id=b.id) for b in BLOCKS if b.lang == lang]


def frameworks_needed(source: str) -> set[str]:
    """Frameworks a Python block imports, directly or through ``from resnet_multi import X``."""
    needed = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            needed |= {FRAMEWORK_OF.get(a.name.split(".")[0]) for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            root = node.module.split(".")[0]
            if root == "resnet_multi":
                needed |= {FRAMEWORK_OF.get(a.name) for a in node.names}
                needed.add(FRAMEWORK_OF.get(node.module.split(".")[1]) if "." in node.module else None)
            else:
                needed.add(FRAMEWORK_OF.get(root))
    return needed - {None}


def skip_unless_installed(frameworks, where: str):
    missing = sorted(f for f in frameworks if importlib.util.find_spec(f) is None)
    if missing:
        pytest.skip(
            f"{where} needs {', '.join(missing)}, not installed in this environment (its own tox environment runs it)"
        )


def lines_match(expected: list[str], actual: list[str]) -> bool:
    """Expected lines against actual ones: a line '...' is any run of lines, '...' in a line any text."""
    if not expected:
        return not actual
    head, rest = expected[0], expected[1:]
    if head == "...":
        return any(lines_match(rest, actual[k:]) for k in range(len(actual) + 1))
    if not actual:
        return False
    pattern = ".*".join(re.escape(part) for part in head.split("..."))
    return re.fullmatch(pattern, actual[0]) is not None and lines_match(rest, actual[1:])


def stripped_lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.rstrip("\n").splitlines()]


# ---- ```python blocks ------------------------------------------------------------------------
@pytest.mark.parametrize("block", blocks("python"))
def test_python_block_prints_what_the_readme_says(block):
    skip_unless_installed(frameworks_needed(block.text), f"README.md's python block at line {block.line}")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block.text, f"README.md:{block.line}", "exec"), {"__name__": "__readme__"})
    if block.output is not None:
        printed, quoted = stripped_lines(out.getvalue()), stripped_lines(block.output.text)
        same = printed == quoted
        assert same, (
            f"README.md line {block.line}: the block prints\n{out.getvalue()}\nnot the output "
            f"quoted at line {block.output.line}:\n{block.output.text}"
        )


# ---- ```console blocks ----------------------------------------------------------------------
def console_commands(block: Block) -> list[tuple[str, list[str]]]:
    """(command, expected output lines) for each ``$ `` line of a console block."""
    out = []
    for line in block.text.rstrip("\n").splitlines():
        if line.startswith("$ "):
            out.append((line[2:], []))
        elif not out:
            raise AssertionError(f"README.md line {block.line}: console block must start with '$ '")
        else:
            out[-1][1].append(line.rstrip())
    return out


def argv_of(command: str) -> list[str]:
    """A README command as this interpreter runs it."""
    words = shlex.split(command)
    if words[0] == "resnet-multi":
        return [sys.executable, "-m", "resnet_multi.cli", *words[1:]]
    if words[0] in ("python", "python3"):
        return [sys.executable, *words[1:]]
    raise AssertionError(f"the test does not know how to run {command!r}")


def run_command(command: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, COLUMNS="80", MPLBACKEND="Agg")
    return subprocess.run(argv_of(command), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def backend_of(command: str) -> str | None:
    words = shlex.split(command)
    if "--backend" in words:
        return words[words.index("--backend") + 1]
    if words[0] in ("python", "python3") and words[1:2] == ["-m"] and words[2].startswith("resnet_multi."):
        return words[2].split(".")[1]
    return None


def skip_unless_backend(command: str, where: str):
    name = backend_of(command)
    if name is not None and name != "numpy":
        skip_unless_installed({FRAMEWORK_OF[name]}, where)


@pytest.mark.parametrize("block", blocks("console"))
def test_console_block_prints_what_the_readme_says(block):
    commands = console_commands(block)
    for command, _ in commands:
        skip_unless_backend(command, f"README.md's console block at line {block.line} ({command})")
    for command, expected in commands:
        done = run_command(command)
        assert done.returncode == 0, f"README.md line {block.line}: `{command}` failed:\n{done.stderr}"
        matches = lines_match(expected, stripped_lines(done.stdout))
        assert matches, (
            f"README.md line {block.line}: `{command}` printed\n{done.stdout}\n"
            f"not what the README quotes:\n" + "\n".join(expected)
        )


# ---- ```bash blocks ----------------------------------------------------------------------------
def shell_commands(block: Block) -> list[str]:
    """Each simple command of a bash block: comments dropped, split at && ; and |."""
    out = []
    for line in block.text.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", line).strip()
        out += [c.strip() for c in re.split(r"&&|;|\|", line) if c.strip()]
    return out


def resnet_multi_argv(command: str) -> list[str] | None:
    """The arguments of a ``resnet-multi`` command (however it is prefixed), else None."""
    words = shlex.split(command)
    for k, word in enumerate(words):
        if word == "resnet-multi" or word.endswith("/resnet-multi"):
            return words[k + 1 :]
    return None


def tox_ini():
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(ROOT / "tox.ini")
    return parser


def pins_in_tox_ini() -> dict[str, str]:
    """The ``name==version`` pins in tox.ini's deps, by base name (tensorflow-cpu -> tensorflow)."""
    pins = {}
    for line in tox_ini()["testenv"]["deps"].splitlines():
        m = re.match(r"^\s*[\w,]+:\s*([A-Za-z0-9_.\-]+)==([\w.+]+)\s*$", line)
        if m:
            pins[base_name(m.group(1))] = m.group(2)
    return pins


def base_name(requirement: str) -> str:
    """A distribution's name without extras or a CPU/GPU/CUDA build suffix."""
    name = re.sub(r"\[.*\]", "", requirement).lower()
    return re.sub(r"-(cpu|gpu|cu\d+)$", "", name)


BASH = blocks("bash")


BASH_COMMANDS = [
    pytest.param(b.values[0], c, id=f"{b.id}-{'-'.join(resnet_multi_argv(c)[:1])}{k}")
    for b in BASH
    for k, c in enumerate(shell_commands(b.values[0]))
    if resnet_multi_argv(c) is not None
]


@pytest.mark.parametrize("block, command", BASH_COMMANDS)
def test_bash_block_command_parses_and_cheap_ones_run(block, command):
    argv = resnet_multi_argv(command)
    try:
        build_parser().parse_args(argv)
    except SystemExit as e:  # --help exits 0 after printing
        assert e.code == 0, f"README.md line {block.line}: `{command}` does not parse"
    if argv[0] in CHEAP_SUBCOMMANDS or "--help" in argv or "-h" in argv:
        skip_unless_backend(command, f"README.md's bash block at line {block.line} ({command})")
        done = run_command(shlex.join(["resnet-multi", *argv]))
        assert done.returncode == 0, f"README.md line {block.line}: `{command}` failed:\n{done.stderr}"


def inline_commands() -> list[tuple[int, str]]:
    """(line, command) for each `resnet-multi ...` code span in the README's prose."""
    found, fenced = [], False
    for number, line in enumerate(README.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced:
            found += [(number, m) for m in re.findall(r"`(resnet-multi [^`]+)`", line)]
    return found


@pytest.mark.parametrize("line, command", inline_commands(), ids=lambda v: str(v).replace(" ", "_"))
def test_inline_commands_in_the_prose_parse(line, command):
    """A command quoted in a sentence (e.g. `resnet-multi conventions tf`) must be one the
    program accepts, as the bash blocks' commands are; `resnet-multi bench` alone names a
    subcommand, which must exist."""
    argv = shlex.split(command)[1:]
    if len(argv) == 1:
        subcommands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
        assert argv[0] in subcommands.choices, f"README.md line {line}: no subcommand `{command}`"
        return
    try:
        build_parser().parse_args(argv)
    except UsageError as e:
        pytest.fail(f"README.md line {line}: `{command}` does not parse: {e}")
    except SystemExit as e:  # --help exits 0 after printing
        assert e.code == 0, f"README.md line {line}: `{command}` does not parse"


def test_every_framework_section_names_its_conventions_command():
    from resnet_multi.conventions import FRAMEWORKS

    named = {c.split()[2] for _, c in inline_commands() if c.split()[1:2] == ["conventions"] and len(c.split()) > 2}
    assert set(FRAMEWORKS) <= named, (
        f"the README's per-framework notes should point to "
        f"`resnet-multi conventions X` for {sorted(set(FRAMEWORKS) - named)}"
    )


def test_pins_in_the_readme_are_the_versions_tox_tests():
    pins = pins_in_tox_ini()
    assert {"torch", "tensorflow", "mxnet", "numpy", "paddlepaddle", "mindspore", "jax"} <= set(pins), pins
    seen = set()
    for number, line in enumerate(README.read_text(encoding="utf-8").splitlines(), 1):
        for name, version in re.findall(r"([A-Za-z][\w.\-]*(?:\[[\w,\-]+\])?)==([\w.+]+)", line):
            if base_name(name) in pins:
                seen.add(base_name(name))
                assert version == pins[base_name(name)], (
                    f"README.md line {number}: {name}=={version}, but tox.ini tests "
                    f"{base_name(name)}=={pins[base_name(name)]}"
                )
    assert seen == set(pins), f"the README gives no tested version of {sorted(set(pins) - seen)}"


def test_tox_environments_in_the_readme_exist():
    ini = tox_ini()
    # the default envlist, and environments defined on their own (e.g. [testenv:compare])
    envs = {e.strip() for e in ini["tox"]["envlist"].split(",")}
    envs |= {section.split(":", 1)[1] for section in ini.sections() if section.startswith("testenv:")}
    named = [
        e
        for block in BLOCKS
        if block.lang == "bash"
        for m in re.finditer(r"tox -e ([\w,]+)", block.text)
        for e in m.group(1).split(",")
    ]
    assert named, "the README should say how to test one backend (tox -e ENV)"
    assert set(named) <= envs, f"README names tox environments {sorted(set(named) - envs)} not in tox.ini"


@pytest.fixture(scope="module")
def tiny_train_output(tmp_path_factory):
    out = tmp_path_factory.mktemp("readme") / "run"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main([*TINY_TRAIN, "--out", str(out)])
    assert code == 0, stderr.getvalue()
    return stdout.getvalue()


def blank_numbers(line: str) -> str:
    return re.sub(r"\d[\d,]*(\.\d+)?", "#", line)


@pytest.mark.parametrize("block", [b for b in BASH if b.values[0].output is not None])
def test_sample_output_has_the_programs_format(block, tiny_train_output):
    """Sample output quoted after a ``train`` command: its figures vary, its format must not."""
    assert any((resnet_multi_argv(c) or [None])[0] == "train" for c in shell_commands(block)), (
        f"README.md line {block.line}: the test only knows the format of `resnet-multi train`'s output"
    )
    quoted = [blank_numbers(line) for line in stripped_lines(block.output.text)]
    actual = [blank_numbers(line) for line in stripped_lines(tiny_train_output)]
    same = quoted == actual
    assert same, (
        f"README.md line {block.output.line} quotes\n{block.output.text}but train prints lines like\n"
        f"{tiny_train_output}"
    )


def test_train_without_preset_says_which_preset_it_ran(tmp_path, capsys):
    """The README: without --preset, train runs the chapter's recipe and says so first."""
    argv = [a for a in TINY_TRAIN if a not in ("--preset", "quick")] + ["--subset", "--resize", "32"]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert err.splitlines()[0].startswith("resnet-multi train: no --preset given, running --preset chapter")
    assert "(preset chapter)" in err.splitlines()[1]


def test_the_readme_is_checked_at_all():
    """Guard against a README reorganised out of this test's reach."""
    langs = [b.lang for b in BLOCKS]
    assert langs.count("python") >= 2 and langs.count("console") >= 1 and langs.count("bash") >= 2
