"""Timing helpers shared by the benchmarks: interleaved repeats, medians, machine header, atomic JSON."""
from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from unclip_core.atomic import write_json


def synchronize(device: str | torch.device) -> None:
    """Wait for queued kernels so wall time covers the work (no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_interleaved(candidates: Mapping[str, Callable[[], Any]], repeats: int, warmup: int = 1,
                     device: str | torch.device = "cpu") -> dict[str, list[float]]:
    """Wall seconds of each candidate per repeat, round-robin (rotated) so shared-CPU load hits all alike.

    `warmup` untimed rounds run first (allocator, kernels, lazy imports). Returns name -> `repeats` times.
    """
    for _ in range(warmup):
        for fn in candidates.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    names = list(candidates)
    for r in range(repeats):
        # rotate who goes first each round, so a drift in background load favours no one
        for name in names[r % len(names):] + names[:r % len(names)]:
            fn = candidates[name]
            synchronize(device)
            t0 = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append(time.perf_counter() - t0)
    return times


def median(xs: list[float]) -> float:
    """Median of a non-empty list of timings."""
    return float(statistics.median(xs))


def machine_info(device: str | torch.device = "cpu") -> dict[str, Any]:
    """What the numbers were measured on: CPU count, torch version and threads, the accelerator if any."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if hasattr(os, "getloadavg"):
        info["load_avg_1min"] = round(os.getloadavg()[0], 2)
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """Write `obj` as JSON to a temporary file beside `path`, then rename it into place."""
    return write_json(path, obj, fsync=False)


def report_ours_vs_diffusers(times: dict[str, list[float]], *, what: str, difference: str,
                             json_path: str | None, payload: dict[str, Any], device: str) -> float:
    """Print the medians and the ratio ours / diffusers of an interleaved timing; write `payload` + them to JSON."""
    sec = {k: median(v) for k, v in times.items()}
    ratio = sec["ours"] / sec["diffusers"]
    print(f"seconds per image ({what}, median of {len(times['ours'])}): ours {sec['ours']:.3f}, diffusers "
          f"{sec['diffusers']:.3f}; ratio ours/diffusers {ratio:.3f} (ours {1 / ratio:.2f}x as fast); {difference}")
    if json_path:
        write_json_atomic(Path(json_path), {**payload, "seconds": times, "ratio": ratio,
                                            "machine": machine_info(device)})
    return ratio


def add_family_args(p: Any, sizes: Mapping[str, Any]) -> Any:
    """The options every ours-vs-diffusers family benchmark takes (size, device, dtype, repeats, threads, json)."""
    p.add_argument("--size", choices=tuple(sizes), default="reduced")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds, interleaved (default 3)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: steadier on a shared CPU)")
    p.add_argument("--json", metavar="PATH", help="also write the results here")
    return p
