"""The machine record that speed figures carry: CPU flags, thread settings, load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from resnet_multi import machine


def test_cpu_flags_are_read_from_cpuinfo(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("model name\t: Some CPU\nflags\t\t: fpu sse4_2 avx avx2 fma avx512f\n")
    original = machine.Path

    def fake_path(name, *rest):
        return cpuinfo if str(name) == "/proc/cpuinfo" else original(name, *rest)

    monkeypatch.setattr(machine, "Path", fake_path)
    assert machine.cpu_name() == "Some CPU"
    assert machine.cpu_flags() == ["sse4_2", "avx", "avx2", "fma", "avx512f"]  # in VECTOR_FLAGS' order, fpu left out


def test_record_names_the_thread_settings_the_process_started_with():
    """A framework may change os.environ on import (Paddle sets OMP_NUM_THREADS=1); the
    record keeps what the process was started with, which reruns it the same way."""
    code = (
        "import json, os\nfrom resnet_multi import machine\n"
        "os.environ['OMP_NUM_THREADS'] = '1'\n"
        "print(json.dumps(machine.record({'intra_op': 2})))"
    )
    env = {**os.environ, "MKL_NUM_THREADS": "3"}
    env.pop("OMP_NUM_THREADS", None)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    record = json.loads(done.stdout)
    if Path("/proc/self/environ").is_file():
        assert "OMP_NUM_THREADS" not in record["thread_env"]
    assert record["thread_env"]["MKL_NUM_THREADS"] == "3"
    assert record["threads"] == {"intra_op": 2}
    assert record["cpus"] == os.cpu_count()


@pytest.mark.skipif(not hasattr(os, "getloadavg"), reason="this platform has no load average")
def test_load_sampler_samples_while_the_block_runs(monkeypatch):
    values = iter([1.0, 3.0, 2.0, 2.0, 2.0, 2.0])
    monkeypatch.setattr(machine, "load_average", lambda: next(values))
    with machine.LoadSampler(every=3600) as load:  # no sample from the thread: only start and end
        pass
    assert load.summary() == {"mean": 2.0, "max": 3.0, "start": 1.0, "end": 3.0}
