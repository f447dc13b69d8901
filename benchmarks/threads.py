"""The demo workload at 1 thread and at all cores, on an idle machine and beside a busy process.

    .venv/bin/python benchmarks/threads.py                 # ~2-4 min on 2 cores
    .venv/bin/python benchmarks/threads.py --quick         # ~30 s

Workload (what `unclip-explorer demo` spends its time on): CLIP image embeddings of 64 ShapesWorld renders with the
bundled CLIP, and one decoder DDIM call (2 images, 10 steps) of the bundled pipeline. Each configuration runs in a
fresh subprocess with torch.set_num_threads(N); "busy" starts one CPU-bound process (a numpy matmul loop, as a
training run would be) for the duration. Reported: median seconds over --repeats and the ratio of all-cores to
1 thread in each condition; the CLI's default (explorer/threads.py: the idle cores) should be the faster column.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import machine_info, median, write_json_atomic  # noqa: E402

WORKLOAD = r"""
import sys, time, torch, numpy as np
torch.set_num_threads(int(sys.argv[1])); n_images = int(sys.argv[2]); steps = int(sys.argv[3])
from unclip_core.clip import ClipEncoder
from unclip_core.pipeline import UnCLIP
from unclip_core.data.shapes_scene import sample_scene
from unclip_core.data.shapes_render import render_array
enc = ClipEncoder.load("shapes-clip")
pipe = UnCLIP.load("shapes-unclip")
rng = np.random.default_rng(0)
images = [render_array(sample_scene(rng, world=enc.world or 1), 64) for _ in range(n_images)]
enc.encode_image(images[:2]); pipe.decode(enc.encode_image(images[:2]), sampling=pipe.sampling.replace(decoder_steps=1), upsample=False, seed=0)  # warm
t0 = time.perf_counter()
z = enc.encode_image(images)
pipe.decode(z[:2], sampling=pipe.sampling.replace(decoder_steps=steps), upsample=False, seed=0)
print(time.perf_counter() - t0)
"""


def _busy(stop_at: float) -> None:
    import numpy as np
    a = np.random.default_rng(0).random((400, 400))
    while time.time() < stop_at:
        a = a @ a
        a /= np.abs(a).max()


def _run(threads: int, n_images: int, steps: int) -> float:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    out = subprocess.run([sys.executable, "-c", WORKLOAD, str(threads), str(n_images), str(steps)],
                         capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parents[1],
                         timeout=600)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return float(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="16 images, 4 steps, 1 repeat")
    p.add_argument("--json", default=None, metavar="PATH")
    a = p.parse_args(argv)
    n_images, steps, repeats = (16, 4, 1) if a.quick else (64, 10, a.repeats)
    cores = os.cpu_count() or 1
    counts = sorted({1, cores})
    results: dict[str, dict[str, float]] = {}
    for condition in ("idle", "busy"):
        worker = None
        if condition == "busy":
            worker = mp.get_context("spawn").Process(target=_busy, args=(time.time() + 3600,), daemon=True)
            worker.start()
            time.sleep(1.0)
        try:
            results[condition] = {str(n): median([_run(n, n_images, steps) for _ in range(repeats)]) for n in counts}
        finally:
            if worker is not None:
                worker.terminate()
                worker.join()
    report = {"machine": machine_info("cpu"), "workload": {"clip_images": n_images, "decoder_steps": steps,
                                                            "decoder_images": 2}, "repeats": repeats,
              "median_s": results,
              "ratio_all_to_one": {c: results[c][str(cores)] / results[c]["1"] for c in results}}
    print(f"demo workload ({n_images} CLIP images + decoder {steps} steps x 2 images), median of {repeats}, "
          f"{cores} cores")
    for c in results:
        cells = "  ".join(f"{n} thread(s): {results[c][str(n)]:.2f} s" for n in counts)
        print(f"  {c:5s} {cells}  ratio {cores}/1 = {report['ratio_all_to_one'][c]:.2f}")
    if a.json:
        print(f"wrote {write_json_atomic(a.json, report)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
