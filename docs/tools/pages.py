"""The documentation's generated pages and fragments, written from the files they describe.

    python docs/tools/pages.py generate --artifacts DIR [--out docs/_generated]
    python docs/tools/pages.py check-links docs/_build/html

``generate`` writes, under ``--out`` (``docs/tools/book.py page`` writes the chapter,
``chapter.md``, beside them):

* ``fragments/*.md``: MyST fragments that the hand-written pages include: the install
  commands and tested versions (from ``tox.ini``), the conventions table
  (``resnet_multi.conventions``), the cross-framework comparison (the traces under
  ``DIR/traces``, compared with ``resnet_multi.compare``, plus the plot), the seed
  spread (``benchmarks/seed_spread.json``), the benchmark tables
  (``benchmarks/**/*.json``), the tox environments and the framework modules' public
  names (read from their source with ``ast``, no framework imported);
* ``compare.png``: ``compare.save_plot`` of the traces.

Every tab set it writes uses the sync group ``framework`` with the backends' names as
sync ids, like the chapter's, so one click selects a framework on every page.

A trace missing from ``DIR/traces`` is an error (each framework's tox environment
records one after its tests) unless ``RESNET_MULTI_DOCS_PARTIAL=1`` is set, which
builds the page from the traces there are and names the missing ones on it.

``check-links`` checks that every local ``href`` and ``src`` in the built HTML names a
file that exists and, for ``#fragment`` links, an element with that id.
"""

from __future__ import annotations

import argparse
import ast
import configparser
import datetime
import html.parser
import json
import os
import re
import shlex
import statistics
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

DOCS = Path(__file__).resolve().parents[1]
REPO = DOCS.parent
sys.path.insert(0, str(REPO))  # the working tree's resnet_multi, not an installed copy

from resnet_multi import bench, compare, conventions, frameworks  # noqa: E402
from resnet_multi.trace import TraceError  # noqa: E402

SYNC_GROUP = "framework"
SEED_SPREAD = REPO / "benchmarks" / "seed_spread.json"
SEED_SPREAD_FORMAT = "resnet_multi.seed_spread.v1"
REVISIONS_FORMAT = "resnet_multi.bench_revisions.v1"
TIME_TO_ACCURACY_FORMAT = "resnet_multi.time_to_accuracy.v1"
THRESHOLD = 1e-3  # the "first step above" column of the cross-framework table


class PagesError(RuntimeError):
    """A source file a page is generated from is missing or not what it should be."""


# ---- shared pieces ------------------------------------------------------------------------
def tab_set(bodies: dict[str, str]) -> str:
    """A sphinx-design tab set, one tab per framework (in ``bodies``' order), synced by name."""
    lines = ["::::{tab-set}", f":sync-group: {SYNC_GROUP}", ""]
    for name, body in bodies.items():
        if ":::" in body:
            raise PagesError(f"a tab's body cannot hold a colon fence: {body[:60]!r}")
        lines += [f":::{{tab-item}} {frameworks.FRAMEWORKS[name].title}", f":sync: {name}", "", body.strip(), ":::"]
        lines.append("")
    lines.append("::::")
    return "\n".join(lines)


def table(header: list[str], rows: list[list[str]]) -> str:
    def cell(value) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    out = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(out)


def code(text: str, language: str = "bash") -> str:
    return f"```{language}\n{text}\n```"


def rel(path: Path) -> str:
    """A path as the reader finds it in the repository."""
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


# ---- tox.ini: tested versions, install lines, environments -----------------------------------
def read_tox(path: Path = REPO / "tox.ini") -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(path, encoding="utf-8")
    return parser


def _factor_lines(value: str) -> dict[str, list[str]]:
    """``factor: item`` lines of a tox setting -> {factor: [items]} (comments dropped)."""
    out: dict[str, list[str]] = {}
    for line in value.splitlines():
        line = line.strip()
        match = re.fullmatch(r"([A-Za-z0-9_-]+):\s*(.+)", line)
        if match and not line.startswith("#"):
            out.setdefault(match[1], []).append(match[2].strip())
    return out


def tested_pins(tox: configparser.ConfigParser) -> dict[str, list[str]]:
    """framework -> the requirements its tox environment pins (``deps``), in tox.ini's order."""
    deps = _factor_lines(tox["testenv"].get("deps", ""))
    return {name: deps.get(name, []) for name in frameworks.NAMES}


def tested_extras(tox: configparser.ConfigParser) -> dict[str, list[str]]:
    """framework -> its own extra where its tox environment installs it. The other extras an
    environment adds (ONNX, the zoos' and exporters' test dependencies) are optional, and
    their own pages say how to install them."""
    extras = _factor_lines(tox["testenv"].get("extras", ""))
    return {name: [e for e in extras.get(name, []) if e == name] for name in frameworks.NAMES}


def envlist(tox: configparser.ConfigParser) -> list[str]:
    return [e.strip() for e in tox["tox"]["envlist"].split(",") if e.strip()]


def _pin(pins: list[str], package: str) -> str:
    for pin in pins:
        if re.match(rf"{re.escape(package)}\s*[=<>!~]", pin):
            return pin
    raise PagesError(f"tox.ini pins no {package!r}; its pins are {pins}")


def _version(pins: list[str], package: str) -> str:
    return _pin(pins, package).split("==", 1)[1]


def _install(pins: list[str], extras: list[str]) -> str:
    target = f'-e ".[{",".join(extras)}]"' if extras else "-e ."
    return " ".join(["pip install", *(shlex.quote(p) for p in pins), target])


def install_lines(tox: configparser.ConfigParser) -> dict[str, dict[str, str]]:
    """framework -> {"cpu": ..., "gpu": ...}: the commands to run in a fresh virtual environment,
    from the clone's root. The CPU line installs exactly what tox.ini tests."""
    pins, extras = tested_pins(tox), tested_extras(tox)
    torch_pin = _pin(pins["torch"], "torch")
    lines = {
        "numpy": {"cpu": "pip install -e .", "gpu": "# none: the reference runs on NumPy, in float64, on the CPU"},
        "torch": {
            # the CPU wheel first: PyPI's Linux torch wheels are CUDA builds of several GB
            "cpu": f"pip install {torch_pin} --index-url https://download.pytorch.org/whl/cpu\n"
            + _install([p for p in pins["torch"] if p != torch_pin], extras["torch"]),
            "gpu": _install([torch_pin], extras["torch"]),
        },
        # tensorflow-cpu, not the [tf] extra, which names the full tensorflow wheel
        "tf": {
            "cpu": _install(pins["tf"], extras["tf"]),
            "gpu": _install([f"tensorflow[and-cuda]=={_version(pins['tf'], 'tensorflow-cpu')}"], ["tf"]),
        },
        "mxnet": {
            "cpu": _install(pins["mxnet"], extras["mxnet"]),
            "gpu": _install(
                [f"mxnet-cu112=={_version(pins['mxnet'], 'mxnet')}", _pin(pins["mxnet"], "numpy")],
                [],
            ),
        },
        "paddle": {
            "cpu": _install(pins["paddle"], extras["paddle"]),
            # not the [paddle] extra: it would add the CPU wheel next to the GPU one
            "gpu": "# from PaddlePaddle's own package index, the build for your CUDA version:\n"
            f"pip install paddlepaddle-gpu=={_version(pins['paddle'], 'paddlepaddle')}\n" + _install([], []),
        },
        "mindspore": {
            "cpu": _install(pins["mindspore"], extras["mindspore"]),
            "gpu": f"# first MindSpore {_version(pins['mindspore'], 'mindspore')}'s CUDA build, as MindSpore's "
            "install instructions give it for your CUDA version; then\n"
            + _install([_pin(pins["mindspore"], "numpy")], []),
        },
        "jax": {
            "cpu": _install(pins["jax"], extras["jax"]),
            "gpu": _install([f"jax[cuda12]=={_version(pins['jax'], 'jax')}"], extras["jax"]),
        },
    }
    return lines


def install_fragment(tox: configparser.ConfigParser) -> str:
    pins = tested_pins(tox)
    lines = install_lines(tox)
    rows = [
        [f.title, f"`tox -e {f.name}`", ", ".join(f"`{p}`" for p in pins[f.name]) or "(the package's own)"]
        for f in frameworks.FRAMEWORKS.values()
    ]
    parts = [
        "The versions that the test environments in `tox.ini` install "
        "(this table is generated from `tox.ini`'s `deps`):",
        "",
        table(["framework", "environment", "pinned packages tested"], rows),
        "",
        "The commands, per framework, in a fresh virtual environment in the clone's root "
        "(`python3 -m venv .venv && . .venv/bin/activate` first). The CPU line installs what the "
        "tests run with; the GPU line is not yet run by this project's CI.",
        "",
    ]
    bodies = {}
    for name in frameworks.NAMES:
        bodies[name] = "\n".join(
            ["CPU:", "", code(lines[name]["cpu"]), "", "NVIDIA GPU (CUDA):", "", code(lines[name]["gpu"])]
        )
    parts.append(tab_set(bodies))
    return "\n".join(parts) + "\n"


def environments_fragment(tox: configparser.ConfigParser) -> str:
    rows = []
    for env in envlist(tox):
        section = f"testenv:{env}"
        if env in frameworks.FRAMEWORKS:
            what = f"{frameworks.FRAMEWORKS[env].title}: its tests, then a short trace for the cross-framework results"
        elif tox.has_section(section):
            what = tox[section].get("description", "").strip()
        else:
            raise PagesError(f"tox.ini's envlist names {env!r}, which has no [{section}] and is no framework")
        rows.append([f"`tox -e {env}`", what])
    return "`tox` runs, in this order (from `tox.ini`'s `envlist`):\n\n" + table(["command", "what"], rows) + "\n"


# ---- conventions ---------------------------------------------------------------------------
def conventions_fragment() -> str:
    return conventions.format_table(conventions.collect(None), markdown=True) + "\n"


def check_conventions_explained(page: Path = DOCS / "differences.md") -> None:
    """Every row of the conventions table has its own section on the differences page."""
    headings = {
        line.lstrip("#").strip() for line in page.read_text(encoding="utf-8").splitlines() if line.startswith("## ")
    }
    missing = [title for title in conventions.TOPICS.values() if title not in headings]
    if missing:
        raise PagesError(f"{rel(page)} explains no row {missing}: add a '## <row title>' section for each")


# ---- cross-framework traces -----------------------------------------------------------------
def _mtime(path: Path) -> str:
    stamp = datetime.datetime.fromtimestamp(path.stat().st_mtime, datetime.timezone.utc)
    return stamp.isoformat(timespec="seconds")


def _fmt(value: float) -> str:
    return "0" if value == 0 else f"{value:.2e}"


def trace_command(t) -> str:
    """The ``resnet-multi trace`` line that records what trace ``t`` holds (its backend's name given)."""
    recipe, spec = t.meta["recipe"], t.meta["spec"]
    args = ["resnet-multi", "trace", "--backend", t.meta["backend"], "--steps", str(recipe["steps"])]
    if spec["name"] != "d2l-resnet18":
        args += ["--arch", spec["name"]]
    args += ["--width", str(spec["width"]), "--batch-size", str(recipe.get("batch_size"))]
    args += ["--resize", str(recipe.get("resize") or 0)]
    threads = t.meta.get("threads", {}).get("env", {}).get("OMP_NUM_THREADS")
    if threads:
        args += ["--threads", threads]
    return shlex.join([*args, "--out", f"traces/{t.meta['backend']}.safetensors"])


def cross_framework_fragment(traces_dir: Path, out: Path, *, partial: bool) -> str:
    found = {name: traces_dir / f"{name}.safetensors" for name in frameworks.NAMES}
    missing = [name for name, path in found.items() if not path.is_file()]
    found = {name: path for name, path in found.items() if name not in missing}
    if missing and not partial:
        raise PagesError(
            f"no trace from {', '.join(missing)} in {traces_dir}: each framework's tox environment records one "
            f"after its tests (tox -e {','.join(missing)}); RESNET_MULTI_DOCS_PARTIAL=1 builds without them"
        )
    parts = []
    if missing:
        parts += [
            ":::{warning}",
            f"No trace from {', '.join(missing)}: this build ran without "
            + ", ".join(f"`tox -e {m}`" for m in missing)
            + ", so the tables below leave them out.",
            ":::",
            "",
        ]
    if len(found) < 2:
        return "\n".join([*parts, "Fewer than two traces were recorded: there is nothing to compare.", ""])
    try:
        c = compare.compare(list(found.values()))
    except TraceError as e:
        raise PagesError(f"the traces in {traces_dir} cannot be compared: {e}") from e
    everyone = [c.reference, *c.traces]
    first = c.reference.meta
    recipe = first["recipe"]
    digests = {t.meta["initial_weights_sha256"] for t in everyone}
    batches = {tuple(t.meta["batches_sha256"][: c.steps]) for t in everyone}
    parts += [
        f"Recipe: {first['spec']['name']} at width {first['spec']['width']}, {c.steps} SGD steps, "
        f"lr {recipe['lr']}, batch {recipe.get('batch_size')}, "
        + (f"images resized to {recipe['resize']}×{recipe['resize']}, " if recipe.get("resize") else "28×28 images, ")
        + f"batch order seed {recipe.get('seed')}, data: {str(recipe.get('data', '')).split(' (')[0]}. "
        f"Each framework's environment ran `{trace_command(c.reference)}` with its own backend's name.",
        "",
        f"**Initial weights:** {'bit-identical' if len(digests) == 1 else 'NOT identical'} in all "
        f"{len(everyone)} traces (SHA-256 of the canonical float32 weights `{sorted(digests)[0][:16]}…`); "
        f"**batches:** {'identical' if len(batches) == 1 else 'NOT identical'} (SHA-256 per step).",
        "",
    ]
    rows = []
    for t in everyone:
        threads = t.meta.get("threads", {})
        rows.append(
            [
                t.name,
                t.meta["framework_version"],
                t.meta["device"] + (", eager" if t.meta.get("eager") else ""),
                threads.get("env", {}).get("OMP_NUM_THREADS") or "unset",
                f"`{t.meta['initial_weights_sha256'][:12]}…`",
                _mtime(t.path),
            ]
        )
    platforms = sorted({t.meta.get("platform", "?") for t in everyone})
    parts += [
        "## The traces",
        "",
        table(["trace", "framework version", "device", "OMP threads", "initial weights", "recorded (UTC)"], rows),
        "",
        f"Files: `<name>.safetensors` in the tox work directory's `artifacts/traces/`; machine: "
        f"{', '.join(platforms)}, {everyone[0].meta.get('threads', {}).get('cpu_count')} CPUs, "
        f"Python {everyone[0].meta.get('python')}.",
        "",
        "## Training loss per step",
        "",
        table(
            ["step", *(t.name for t in everyone)],
            [[str(k), *(f"{float(t.tensors['loss'][k]):.6f}" for t in everyone)] for k in range(c.steps)],
        ),
        "",
        f"## Differences from {c.reference.name}",
        "",
        "Relative differences (`max |a - r| / max |r|` for tensors, `|a - r| / |r|` for the loss), "
        f"as `resnet-multi compare` measures them; *worst* is the largest over the {c.steps} steps.",
        "",
    ]
    rows = []
    for t in c.traces:
        diffs = c.diffs[t.name]

        def worst(key: str, diffs=diffs) -> str:
            return _fmt(max(d.values[key] for d in diffs))

        hit = c.first_divergence(t.name, THRESHOLD)
        rows.append(
            [
                t.name,
                _fmt(diffs[0].values["logits"]),
                worst("logits"),
                worst("loss"),
                worst("grad norms"),
                worst("bn stats"),
                f"step {hit[0]}, {hit[1]} ({hit[2]:.2e})" if hit else f"none in {c.steps} steps",
            ]
        )
    parts += [
        table(
            [
                "trace",
                "logits, step 0",
                "logits, worst",
                "loss, worst",
                "gradient norms, worst",
                "BN statistics, worst",
                f"first above {THRESHOLD:g}",
            ],
            rows,
        ),
        "",
    ]
    for note in getattr(c, "notes", []):  # what resnet-multi compare could not compare, and why
        parts += [":::{note}", note, ":::", ""]
    compare.save_plot(c, out / "compare.png")
    parts += [
        "```{image} /_generated/compare.png",
        ":alt: the training loss per step in every framework, and each framework's relative difference from "
        f"{c.reference.name} per step on a log scale",
        "```",
        "",
        "Left: the loss curves, overlaid. Right: each framework's relative difference from "
        f"{c.reference.name} per step, logits (solid) and gradient norms (dashed), on a log scale.",
        "",
    ]
    return "\n".join(parts)


def seed_spread_fragment(path: Path = SEED_SPREAD) -> str:
    command = "python scripts/seed_spread.py --env-dir ~/.cache/resnet-multi/tox --json " + rel(path)
    if not path.is_file():
        return (
            f"The seed-spread table appears here once `{rel(path)}` is committed. "
            f"`{command}` trains the quick preset once per (framework, seed) in each framework's environment "
            "and writes it.\n"
        )
    result = json.loads(path.read_text(encoding="utf-8"))
    if result.get("format") != SEED_SPREAD_FORMAT:
        raise PagesError(f"{rel(path)} is not a {SEED_SPREAD_FORMAT} file (format {result.get('format')!r})")
    machine = result["machine"]
    rows = [
        [
            r["backend"],
            str(r["seed"]),
            f"{r['train_loss']:.3f}",
            f"{r['train_acc']:.3f}",
            f"{r['test_acc']:.3f}",
            "an earlier run, read back" if r.get("reused") else "this run",
        ]
        for r in result["rows"]
    ]

    def spread(key: str) -> str:
        s = result["spread"].get(key)
        if not s:
            return "(fewer than two runs)"
        return f"{s['max_minus_min']:.3f} (mean {s['mean']:.3f}, sd {s['sd']:.3f}, n = {s['n']})"

    return "\n".join(
        [
            f"{result['recipe']}, {result['threads']} CPU thread(s) per run.",
            "",
            table(["framework", "seed", "train loss", "train acc", "test acc", "trained in"], rows),
            "",
            f"Test-accuracy spread (max − min) across seeds of {result['seed_backend']}: {spread('seeds')}; "
            f"across frameworks at seed 0: {spread('backends')}.",
            "",
            f"Machine: {machine['processor']}, {machine['cpus']} CPUs, {machine['platform']}; "
            f"{result['started_utc']} to {result['finished_utc']}; file `{rel(path)}`; command: "
            f"`{shlex.join(result['command'])}`.",
            "",
        ]
    )


# ---- benchmarks -----------------------------------------------------------------------------
def bench_command(result: dict, path: Path) -> str:
    """The ``resnet-multi bench`` line that measures what ``result`` records."""
    args = [f"{k}={v}" for k, v in sorted(result["machine"].get("thread_env", {}).items())]
    args += ["resnet-multi", "bench", "--backend", result["backend"]]
    if result["device"] != "cpu":
        args += ["--device", result["device"]]
    if result["arch"] != "d2l-resnet18":
        args += ["--arch", result["arch"]]
    if result["width"] != 64:
        args += ["--width", str(result["width"])]
    args += ["--size", str(result["input_shape"][2]), "--batch-size", str(result["batch_size"])]
    args += ["--steps", str(result["steps"]), "--warmup", str(result["warmup"])]
    if result["eager"]:
        args.append("--eager")
    elif result["models"]["package"]["idiom"].endswith(", compiled"):
        args.append("--compiled")  # explicit: MindSpore's default on a CPU is eager
    if result.get("textbook_na") == "not requested":
        args.append("--no-textbook")
    return shlex.join(args + ["--json", rel(path)])


def _machine(result: dict) -> str:
    m = result["machine"]
    load = m["load_average_1min"]
    text = f"{m['processor']}, {m['cpus']} CPUs, {m['platform']}, Python {m['python']}"
    if m.get("cpu_flags"):  # files from before the machine record had flags and threads lack them
        text += f"; vector instructions {' '.join(m['cpu_flags'])}"
    if "threads" in m:
        threads = ", ".join(f"{k} {v}" for k, v in m["threads"].items())
        text += f"; {result['backend']}'s threads: {threads or 'its default (no API reports them)'}"
    text += f"; 1-minute load average {load['start']:.2f} at the start, {load['end']:.2f} at the end"
    if "mean" in load:
        text += f" (mean {load['mean']:.2f}, max {load['max']:.2f}, sampled every 2 s)"
    return text


def bench_section(result: dict, path: Path) -> str:
    bench.check_result(result)
    n, c, h, w = result["input_shape"]
    rows = []
    for phase in bench.PHASES:
        for name, model in result["models"].items():
            s = model[phase]
            rows.append(
                [
                    phase,
                    name,
                    model["idiom"],
                    f"{s['first_step_s']:.3f}",
                    f"{s['step_s']['median']:.4f}",
                    f"{s['step_s']['min']:.4f}",
                    f"{s['step_s']['max']:.4f}",
                    f"{s['examples_per_s']:.1f}",
                    f"{s['flop_per_s'] / 1e9:.3g}",
                ]
            )
        if result["ratio"]:
            rows.append([phase, "package / textbook", "", "", "", "", "", f"{result['ratio'][phase]:.2f}", ""])
    lines = [
        f"### {result['backend']}: `{rel(path)}`",
        "",
        f"{result['arch']} (width {result['width']}) on {result['backend']} {result['framework_version']} "
        f"({result['device']}{', eager' if result['eager'] else ''}), batch {n} of {c}×{h}×{w}; "
        f"{result['steps']} timed steps per model after {result['warmup']} warm-up.",
        "",
        f"- started (UTC): {result['started_utc']}",
        f"- machine: {_machine(result)}",
        f"- thread variables: {result['machine'].get('thread_env') or 'none set'}"
        if "thread_env" in result["machine"]
        else "- thread variables: not recorded by this file",
        f"- command: `{bench_command(result, path)}`",
        "",
        table(
            [
                "phase",
                "model",
                "idiom",
                "first step (s)",
                "median step (s)",
                "min (s)",
                "max (s)",
                "examples/s",
                "GFLOP/s",
            ],
            rows,
        ),
        "",
    ]
    if result["textbook_na"]:
        lines += [f"No textbook baseline: {result['textbook_na']}.", ""]
    return "\n".join(lines)


def _rounds_command(script: str, options: list[str], result: dict, path: Path) -> str:
    """The command that measures a file of alternating rounds again."""
    rounds = ["--backends", ",".join(result["backends"]), "--rounds", str(len(result["rounds"]))]
    return shlex.join(["python", script, *options, *rounds, "--json", rel(path), "--", *result["bench_args"]])


def _rounds_facts(runs: list[dict], command: str) -> list[str]:
    """When, where and at what load a file of rounds ran, and how to run it again."""
    first = runs[0]["machine"]
    loads = [v for run in runs for v in run["machine"]["load_average_1min"].values()]
    return [
        f"- started (UTC): {runs[0]['started_utc']} (first run) to {runs[-1]['started_utc']} (last run)",
        f"- machine: {first['processor']}, {first['cpus']} CPUs, {first['platform']}, Python {first['python']}; "
        f"1-minute load average {min(loads):.2f} to {max(loads):.2f} over the runs",
        f"- command: `{command}`",
    ]


def rounds_section(result: dict, path: Path) -> str:
    backends, rounds = result["backends"], result["rounds"]
    runs = [rnd[b] for rnd in rounds for b in backends]
    for run in runs:
        bench.check_result(run)
    first = rounds[0][backends[0]]
    n, c, h, w = first["input_shape"]
    rows = []
    for b in backends:
        row = [b, rounds[0][b]["framework_version"]]
        for phase in bench.PHASES:
            speeds = [rnd[b]["models"]["package"][phase]["examples_per_s"] for rnd in rounds]
            ratios = [
                rnd[b]["models"]["package"][phase]["examples_per_s"]
                / rnd[backends[0]]["models"]["package"][phase]["examples_per_s"]
                for rnd in rounds
            ]
            row += [f"{statistics.median(speeds):.1f}", f"{statistics.median(ratios):.2f}"]
        rows.append(row)
    command = _rounds_command("scripts/bench_backends.py", [], result, path)
    header = ["backend", "version"]
    for phase in bench.PHASES:
        header += [f"{phase} examples/s (median of rounds)", f"{phase} / {backends[0]} (median of rounds)"]
    return "\n".join(
        [
            f"### {' vs '.join(backends)}: `{rel(path)}`",
            "",
            f"{first['arch']} (width {first['width']}), batch {n} of {c}×{h}×{w}, {first['steps']} timed steps "
            f"after {first['warmup']} warm-up per run, {len(rounds)} rounds alternating the backends, "
            "package models only.",
            "",
            *_rounds_facts(runs, command),
            "",
            table(header, rows),
            "",
        ]
    )


def revisions_section(result: dict, path: Path) -> str:
    """A ``scripts/bench_revisions.py`` file: each backend's package step at two revisions."""
    backends, rounds = result["backends"], result["rounds"]
    runs = [rnd[b][rev] for rnd in rounds for b in backends for rev in ("before", "after")]
    for run in runs:
        bench.check_result(run)
    first = runs[0]
    n, c, h, w = first["input_shape"]
    rows = []
    for b in backends:
        row = [b, rounds[0][b]["after"]["framework_version"]]
        for phase in bench.PHASES:
            speed = {
                rev: [rnd[b][rev]["models"]["package"][phase]["examples_per_s"] for rnd in rounds]
                for rev in ("before", "after")
            }
            ratios = [a / x for a, x in zip(speed["after"], speed["before"])]
            row += [
                f"{statistics.median(speed['before']):.1f}",
                f"{statistics.median(speed['after']):.1f}",
                f"{statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f})",
            ]
        rows.append(row)
    revisions = ["--before", result["before"], *(["--after", result["after"]] if result.get("after") else [])]
    command = _rounds_command("scripts/bench_revisions.py", revisions, result, path)
    header = ["backend", "version"]
    for phase in bench.PHASES:
        header += [f"{phase} examples/s before", f"{phase} after", f"{phase} after / before (min–max)"]
    return "\n".join(
        [
            f"### `{result['before']}` against `{result.get('after') or 'the working tree'}`: `{rel(path)}`",
            "",
            f"{first['arch']} (width {first['width']}), batch {n} of {c}×{h}×{w}, {first['steps']} timed steps "
            f"after {first['warmup']} warm-up per run, {len(rounds)} rounds; in each round every backend runs "
            "the package's step at the earlier revision, then at the later one (medians over rounds).",
            "",
            *_rounds_facts(runs, command),
            "",
            table(header, rows),
            "",
        ]
    )


def time_to_accuracy_section(result: dict, path: Path) -> str:
    """A ``scripts/time_to_accuracy.py`` file: the fast preset trained to the end in each framework."""
    rows, targets = result["rows"], [f"{t:.2f}" for t in result["targets"]]
    if not rows:
        raise PagesError(f"{rel(path)}: no runs")
    fastest = max(r["examples_per_sec"] for r in rows)
    body = []
    for r in rows:
        load = r.get("load_average_1min")
        body.append(
            [
                r["backend"],
                result["framework_versions"][r["backend"]],
                str(r["seed"]),
                " · ".join(f"{a:.3f}" for a in r["test_acc"]),
                *("—" if r["seconds_to"][t] is None else f"{r['seconds_to'][t]:.0f}" for t in targets),
                f"{r['total_train_seconds']:.0f}",
                f"{r['examples_per_sec']:.0f}",
                f"{fastest / r['examples_per_sec']:.1f}×",
                "—" if not load else f"{load['mean']:.2f} ({load['max']:.2f})",
                r.get("started_utc", "—"),
            ]
        )
    m = result["machine"]
    threads = "; ".join(
        f"{b} {', '.join(f'{k} {v}' for k, v in t.items()) or 'its default (no API reports it)'}"
        for b, t in result["framework_threads"].items()
    )
    starts = [r["started_utc"] for r in rows if r.get("started_utc")]
    spread = result["seed_spread"]
    first_seed = spread["seeds"][0]
    frameworks_acc = [r["final_test_acc"] for r in rows if r["seed"] == first_seed]
    lines = [
        f"### `{rel(path)}`",
        "",
        f"`{result['recipe']}`, one run at a time, each in its framework's environment; "
        f"seconds to a target are training seconds up to the end of the first epoch whose test "
        f"accuracy (full 10,000-image test set) reached it.",
        "",
        f"- runs started (UTC): {min(starts) if starts else result['started_utc']} to "
        f"{max(starts) if starts else result['started_utc']}; file written {result['finished_utc']} "
        "(a finished run is read, not trained again)",
        f"- machine: {m['processor']}, {m['cpus']} CPUs ({' '.join(m['cpu_flags'])}), {m['platform']}, "
        f"Python {m['python']}",
        f"- threads: {threads}; thread variables: {m['thread_env'] or 'none set'}",
        f"- command: `{shlex.join(result['command'])}`",
        "",
        table(
            [
                "backend",
                "version",
                "seed",
                "test accuracy after each epoch",
                *(f"s to {t}" for t in targets),
                "training s",
                "examples/s",
                "slower than the fastest",
                "1-min load mean (max)",
                "run started (UTC)",
            ],
            body,
        ),
        "",
    ]
    if len(spread["seeds"]) > 1:
        lines += [
            f"Final test accuracy over {spread['backend']}'s seeds {', '.join(map(str, spread['seeds']))}: "
            f"{min(spread['final_test_acc']):.4f} to {max(spread['final_test_acc']):.4f}; over the "
            f"frameworks at seed {first_seed}: {min(frameworks_acc):.4f} to {max(frameworks_acc):.4f}.",
            "",
        ]
    return "\n".join(lines)


def benchmarks_fragment(root: Path = REPO / "benchmarks") -> str:
    files = sorted(root.rglob("*.json"))
    if not files:
        raise PagesError(f"no benchmark files under {rel(root)}")
    summary, sections = [], {}
    for path in files:
        result = json.loads(path.read_text(encoding="utf-8"))
        folder = rel(path.parent)
        if result.get("format") == bench.FORMAT:
            sections.setdefault(folder, []).append(bench_section(result, path))
            ratio = result["ratio"]
            summary.append(
                [
                    f"`{rel(path)}`",
                    result["backend"],
                    f"{result['models']['package']['train']['examples_per_s']:.1f}",
                    f"{result['models']['package']['inference']['examples_per_s']:.1f}",
                    f"{ratio['train']:.2f}" if ratio else "—",
                    result["started_utc"],
                    f"{result['machine']['load_average_1min']['start']:.2f}",
                ]
            )
        elif result.get("format") == REVISIONS_FORMAT:
            sections.setdefault(folder, []).append(revisions_section(result, path))
        elif result.get("format") == TIME_TO_ACCURACY_FORMAT:
            sections.setdefault(folder, []).append(time_to_accuracy_section(result, path))
        elif {"backends", "bench_args", "rounds"} <= set(result):
            sections.setdefault(folder, []).append(rounds_section(result, path))
        elif result.get("format") == SEED_SPREAD_FORMAT:
            continue  # on the cross-framework results page
        else:
            raise PagesError(f"{rel(path)}: not a benchmark result this page knows (format {result.get('format')!r})")
    parts = [
        "## Summary",
        "",
        "The package's model, per `resnet-multi bench` file; the sections below give each file's "
        "machine, date, load and command.",
        "",
        table(
            [
                "file",
                "backend",
                "train examples/s",
                "inference examples/s",
                "train: package / textbook",
                "started (UTC)",
                "load at start",
            ],
            summary,
        ),
        "",
    ]
    for folder, texts in sections.items():
        parts += [f"## `{folder}/`", "", *texts]
    return "\n".join(parts)


# ---- the command line --------------------------------------------------------------------
def cli_fragment() -> str:
    """Each command's --help, as ``resnet-multi <command> --help`` prints it (at 100 columns)."""
    from resnet_multi import cli

    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal's width
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    summaries = {a.dest: a.help for a in commands._choices_actions}
    parts = ["## resnet-multi", "", code(parser.format_help().rstrip(), "text"), ""]
    for name, sub in commands.choices.items():
        parts += [
            f"## resnet-multi {name}",
            "",
            f"{summaries.get(name, '')}.",
            "",
            code(sub.format_help().rstrip(), "text"),
        ]
        parts.append("")
    return "\n".join(parts)


# ---- the framework modules' public names ----------------------------------------------------
def public_names(path: Path) -> list[tuple[str, str, str]]:
    """(kind, signature, first docstring line) of each public top-level class and function."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out = []
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and not node.name.startswith("_"):
            doc = (ast.get_docstring(node) or "").strip().split("\n\n")[0].replace("\n", " ")
            if isinstance(node, ast.ClassDef):
                bases = ", ".join(ast.unparse(b) for b in node.bases)
                out.append(("class", f"{node.name}({bases})" if bases else node.name, doc))
            else:
                out.append(("function", f"{node.name}({ast.unparse(node.args)})", doc))
    return out


def framework_modules_fragment() -> str:
    bodies = {}
    for f in frameworks.FRAMEWORKS.values():
        path = conventions.module_path(f.name)
        rows = [[kind, f"`{sig}`", doc] for kind, sig, doc in public_names(path)]
        bodies[f.name] = f"`{f.module}` (`{rel(path)}`)\n\n" + table(["kind", "name", "summary"], rows)
    return tab_set(bodies) + "\n"


# ---- all of it ----------------------------------------------------------------------------
def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or path.read_text(encoding="utf-8") != text:  # unchanged files keep Sphinx's cache
        path.write_text(text, encoding="utf-8")


def generate(artifacts: Path, out: Path, *, partial: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    fragments = out / "fragments"
    tox = read_tox()
    check_conventions_explained()
    write(fragments / "install.md", install_fragment(tox))
    write(fragments / "environments.md", environments_fragment(tox))
    write(fragments / "conventions.md", conventions_fragment())
    write(fragments / "cross_framework.md", cross_framework_fragment(artifacts / "traces", out, partial=partial))
    write(fragments / "seed_spread.md", seed_spread_fragment())
    write(fragments / "benchmarks.md", benchmarks_fragment())
    write(fragments / "framework_modules.md", framework_modules_fragment())
    write(fragments / "cli.md", cli_fragment())
    print(f"pages written to {rel(out)}")


# ---- internal links in the built site --------------------------------------------------------
class _Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        for key, value in attrs:
            if key in ("id", "name") and value:
                self.ids.add(value)
            elif key in ("href", "src") and value and not (tag == "a" and key == "name"):
                self.links.append(value)


def _parse(path: Path) -> _Links:
    parser = _Links()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    return parser


def broken_links(site: Path) -> list[str]:
    """'page: link (why)' for every local href/src in the site that does not resolve."""
    site = site.resolve()
    pages = sorted(site.rglob("*.html"))
    if not pages:
        raise PagesError(f"no HTML pages under {site}: build the site first")
    parsed = {p: _parse(p) for p in pages}
    broken = []
    for page, links in parsed.items():
        for link in links.links:
            parts = urlsplit(link)
            if parts.scheme or parts.netloc or link.startswith(("javascript:", "data:")):
                continue  # external: not checked offline
            target = page if not parts.path else (page.parent / unquote(parts.path)).resolve()
            if target.is_dir():
                target = target / "index.html"
            where = f"{page.relative_to(site)}: {link}"
            if not target.is_relative_to(site):
                broken.append(f"{where} (outside the site)")
            elif not target.is_file():
                broken.append(f"{where} (no such file)")
            elif parts.fragment and target.suffix == ".html":
                ids = parsed[target].ids if target in parsed else _parse(target).ids
                if unquote(parts.fragment) not in ids:
                    broken.append(f"{where} (no element with id {parts.fragment!r})")
    return broken


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="write the generated pages and fragments")
    gen.add_argument("--artifacts", type=Path, required=True, help="holds traces/ from the tox run")
    gen.add_argument("--out", type=Path, default=DOCS / "_generated")
    links = sub.add_parser("check-links", help="check the built site's internal links")
    links.add_argument("site", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "generate":
            generate(args.artifacts, args.out, partial=os.environ.get("RESNET_MULTI_DOCS_PARTIAL") == "1")
            return 0
        broken = broken_links(args.site)
        for line in broken:
            print(line, file=sys.stderr)
        print(f"{len(broken)} broken internal link(s) in {args.site}")
        return 1 if broken else 0
    except PagesError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
