"""Training throughput of the decoder on the folder and webdataset loaders vs the in-memory ShapesWorld sampler.

    .venv/bin/python benchmarks/train_loaders.py                        # ~5 min on a shared core
    .venv/bin/python benchmarks/train_loaders.py --preset tiny --steps 4 --batch 4 --n-items 16 --repeats 1   # ~20 s

The same decoder run (same CLIP, network, batch, seed) trains on three sources in one process: ShapesWorld scenes
rendered on the fly (`data kind = "shapesworld"`, the recipes' sampler; it CLIP-encodes each batch), the same
number of scenes exported as a folder (images/*.png + captions.jsonl) and as webdataset .tar shards (png + txt).
The folder and shards read their z_i from the embedding cache, built before timing (its time is reported apart).

On a shared machine the load drifts over minutes, so the sources take turns in many short rounds (--repeats rounds
of --steps steps each, the order rotated every round) and each round gives its own ratio loader / sampler (images/s
of the steps after the first): the reported ratio is the median of those per-round ratios (the loader must not be
the bottleneck: >= 0.9). The direct evidence is reported beside it: the seconds one batch takes to load, apart from
the step (render + CLIP-encode for the sampler; read + decode + cached z_i for the loaders), timed interleaved,
and its share of the median step.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import machine_info, median, time_interleaved, write_json_atomic  # noqa: E402


def write_shards(export: Path, out: Path, per_shard: int) -> str:
    """The export's images and captions as webdataset shards out/shard-NNN.tar -> the '{000..N}' pattern."""
    rows = [json.loads(line) for line in (export / "captions.jsonl").read_text().splitlines() if line.strip()]
    out.mkdir(parents=True, exist_ok=True)
    n_shards = (len(rows) + per_shard - 1) // per_shard
    for s in range(n_shards):
        with tarfile.open(out / f"shard-{s:03d}.tar", "w") as tf:
            for k, row in enumerate(rows[s * per_shard:(s + 1) * per_shard]):
                key = f"{s:03d}{k:05d}"
                for name, data in ((f"{key}.png", (export / row["file"]).read_bytes()),
                                   (f"{key}.txt", row["caption"].encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
    return str(out / f"shard-{{000..{n_shards - 1:03d}}}.tar")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clip", default="shapes-clip")
    p.add_argument("--preset", default="small", choices=("tiny", "small"), help="the decoder's size (MODEL_PRESETS)")
    p.add_argument("--steps", type=int, default=4, help="training steps per source and round (the first untimed)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--n-items", type=int, default=256, help="scenes exported for the folder and the shards")
    p.add_argument("--repeats", type=int, default=8, help="rounds; each source trains once per round, rotated")
    p.add_argument("--load-repeats", type=int, default=20, help="interleaved timings of loading one batch")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", metavar="PATH")
    a = p.parse_args(argv)
    import torch
    torch.set_num_threads(a.threads)
    from explorer.api import export_shapes
    from explorer.training import open_training_data, prepare_run
    from unclip_core.clip import ClipEncoder
    from unclip_core.train.diffusion import MODEL_PRESETS, DiffusionTrainConfig, _render_batch, train_stage
    from unclip_core.data.shapes import ShapesConfig

    clip = ClipEncoder.load(a.clip)
    world = clip.world or 2
    tmp = Path(tempfile.mkdtemp(prefix="train-loaders-"))
    export = Path(export_shapes(tmp / "export", n=a.n_items, seed=7, size=64, world=world, progress=False))
    pattern = write_shards(export, tmp / "shards", per_shard=max(1, a.n_items // 4))
    model = dict(MODEL_PRESETS["decoder"][a.preset], image_size=64 if a.preset == "small" else 32)
    sources = {"shapesworld": {}, "folder": {"kind": "folder", "path": str(export)},
               "webdataset": {"kind": "webdataset", "path": pattern}}
    common = dict(stage="decoder", model=model, clip=a.clip, n_steps=a.steps, batch_size=a.batch, warmup_steps=1,
                  prediction="v", precision="fp32", tensorboard=False, checkpoint_every=10 ** 6, log_every=10 ** 6,
                  world=world)
    configs, items, cache_s = {}, {}, {}
    for name, data in sources.items():
        cfg, _ = prepare_run(DiffusionTrainConfig(**common, **({"data": {**data, "cache": str(tmp / "cache")}}
                                                               if data else {})), clip=clip)
        configs[name] = cfg
        if data:
            t0 = time.perf_counter()
            items[name] = open_training_data(cfg, clip=clip, run_dir=tmp / f"run-{name}", progress=False)
            cache_s[name] = time.perf_counter() - t0
    step_s: dict[str, list[float]] = {n: [] for n in sources}
    names = list(sources)
    for r in range(a.repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            stamps: list[float] = []
            train_stage(configs[name], tmp / f"round{r}-{name}", resume=False, progress=False, clip=clip,
                        data=items.get(name), callback=lambda step, m: stamps.append(time.perf_counter()))
            step_s[name].append((stamps[-1] - stamps[0]) / (len(stamps) - 1))  # steps after the first
    # each round's ratio compares sources timed back to back (seconds apart), not a whole run apart
    round_ratios = {n: [s0 / s for s, s0 in zip(step_s[n], step_s["shapesworld"])] for n in ("folder", "webdataset")}
    # loading one batch, apart from the step: render + CLIP-encode (sampler) vs read + decode + cached z_i (loaders)
    size = model["image_size"]
    idx = list(range(a.batch))
    shapes = ShapesConfig(0, 64, "train", (1, 2, 3), None, world=world)
    load = {"shapesworld": lambda: clip.encode_image(_render_batch(shapes, idx, (clip.image_size, size))[0][0])}
    for name in ("folder", "webdataset"):
        load[name] = (lambda it: lambda: it.batch(idx, sizes=(size,)))(items[name])
    with torch.no_grad():
        load_times = time_interleaved(load, repeats=a.load_repeats)
    load_s = {n: median(t) for n, t in load_times.items()}
    ips = {n: a.batch / median(v) for n, v in step_s.items()}
    ratios = {n: median(v) for n, v in round_ratios.items()}
    step_median = {n: median(v) for n, v in step_s.items()}
    for n in sources:
        print(f"{n:12s} {ips[n]:7.2f} images/s (median {step_median[n]:.3f} s/step of {a.batch}); loading one batch "
              f"{load_s[n]:.4f} s = {100 * load_s[n] / step_median[n]:.2f}% of a step"
              + (f"; cache built in {cache_s[n]:.1f} s" if n in cache_s else ""))
    for n, v in ratios.items():
        spread = ", ".join(f"{x:.2f}" for x in round_ratios[n])
        print(f"ratio {n}/shapesworld (images/s, median of {a.repeats} rounds) = {v:.2f} "
              f"({'not the bottleneck' if v >= 0.9 else 'BELOW 0.9'}); per round: {spread}")
    result = {"settings": vars(a), "images_per_s": ips, "ratio": ratios, "round_ratios": round_ratios,
              "step_seconds": step_s, "load_batch_seconds": load_s, "load_batch_seconds_all": load_times,
              "load_share_of_step": {n: load_s[n] / step_median[n] for n in sources}, "cache_seconds": cache_s,
              "machine": machine_info()}
    if a.json:
        write_json_atomic(Path(a.json), result)
    import shutil
    shutil.rmtree(tmp, ignore_errors=True)
    return result


if __name__ == "__main__":
    main()
