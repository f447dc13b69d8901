"""How many torch threads the command line uses: the idle cores, measured as the rule that benchmarks/threads.py backs.

Measured by benchmarks/threads.py on this project's 2-core machine (demo workload, median of 3): idle, 2 threads
1.12 s vs 1 thread 1.80 s; beside one busy process, 2 threads 5.71 s vs 1 thread 2.55 s (the threads wait on each
other while one is descheduled).
So the default is the number of cores not already busy (cores minus the 1-minute load average, at least 1).
`UNCLIP_THREADS=N` overrides it (so does the usual OMP_NUM_THREADS, and `--threads` where a command has it).
"""
from __future__ import annotations

import os

ENV = "UNCLIP_THREADS"


def default_threads(cpu_count: int | None = None, load: float | None = None) -> int:
    """Idle cores: cpu_count - round(1-minute load), clamped to [1, cpu_count]; UNCLIP_THREADS overrides."""
    env = os.environ.get(ENV)
    if env is not None and env.strip():
        try:
            n = int(env)
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f"{ENV}={env!r} must be an integer >= 1 (torch threads); unset it for the default "
                             "(the idle cores)")
        return n
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) >= 1:
        return int(omp)
    cores = cpu_count if cpu_count is not None else (os.cpu_count() or 1)
    if load is None:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, min(cores, cores - int(round(load))))


def apply_default_threads() -> int:
    """Use default_threads() for torch's intra-op threads (set now if torch is imported, else through
    OMP_NUM_THREADS, which torch reads when it starts); returns the number."""
    import sys
    n = default_threads()
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
    else:
        os.environ["OMP_NUM_THREADS"] = str(n)
    return n
