"""What a speed figure needs next to it so that someone else can check it: the CPU (model
and the vector instructions that decide which kernels a framework can use), the thread
settings, and the machine's load while the figure was measured.

Used by ``resnet-multi bench`` and ``scripts/time_to_accuracy.py``; each backend adds its
framework's own thread counts (:meth:`resnet_multi.backend.Backend.cpu_threads`).
"""

from __future__ import annotations

import os
import platform
import threading
from pathlib import Path

# Environment variables that set how many threads the frameworks' CPU kernels use.
THREAD_ENV = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "TF_NUM_INTRAOP_THREADS",
    "TF_NUM_INTEROP_THREADS",
    "XLA_FLAGS",
)
# The CPU flags that decide which kernels (oneDNN, XLA, MKL) a framework can pick.
VECTOR_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_bf16")


def _cpuinfo_field(name: str) -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(name):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_name() -> str:
    return _cpuinfo_field("model name") or platform.processor()


def cpu_flags() -> list[str]:
    """Which of :data:`VECTOR_FLAGS` this CPU has ([] where /proc/cpuinfo is absent)."""
    present = set((_cpuinfo_field("flags") or "").split())
    return [flag for flag in VECTOR_FLAGS if flag in present]


def load_average() -> float | None:
    """The 1-minute load average (None where the platform has none)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def started_environment() -> dict[str, str] | None:
    """The environment this process was started with, before any import changed
    ``os.environ`` (Paddle sets OMP_NUM_THREADS=1); None where /proc/self/environ is absent."""
    try:
        raw = Path("/proc/self/environ").read_bytes()
    except OSError:
        return None
    return dict(item.decode(errors="replace").split("=", 1) for item in raw.split(b"\0") if b"=" in item)


def thread_env() -> dict[str, str]:
    """The :data:`THREAD_ENV` variables this process was started with: what a command
    needs to run the same way again (``os.environ`` where the start is unknown)."""
    started = started_environment()
    started = os.environ if started is None else started
    return {k: started[k] for k in THREAD_ENV if k in started}


def record(threads: dict | None = None) -> dict:
    """The machine's record for a result file; ``threads``: the framework's own counts."""
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": cpu_name(),
        "cpu_flags": cpu_flags(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        # thread settings change CPU figures several-fold on a loaded machine
        "thread_env": thread_env(),
        "threads": threads or {},
    }


class LoadSampler:
    """The 1-minute load average every ``every`` seconds, in a thread, while a block runs.

    with LoadSampler() as load:
        ...
    load.summary()  # {"mean", "max", "start", "end"}, or None without a load average
    """

    def __init__(self, every: float = 5.0):
        self.every, self.samples, self._stop = every, [], threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _take(self):
        value = load_average()
        if value is not None:
            self.samples.append(value)

    def _sample(self):
        while not self._stop.wait(self.every):
            self._take()

    def __enter__(self):
        self._take()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._take()

    def summary(self) -> dict | None:
        if not self.samples:
            return None
        return {
            "mean": sum(self.samples) / len(self.samples),
            "max": max(self.samples),
            "start": self.samples[0],
            "end": self.samples[-1],
        }
