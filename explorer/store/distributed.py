"""Distributed embedding: N processes (torchrun ranks, or machines given a rank) split one `embed_items` call.

Every rank resolves the same inputs and cuts the same chunks as a single-process run (`plan_job`); rank r embeds
chunks r, r + N, r + 2N, ... with the same batches, so its vectors equal the single-process ones bit for bit. It
writes them into its own store shard, STORE/.shards/rank-RRRRR-of-NNNNN (an ordinary store, built in
STORE/.shards/rank-...partial/ chunk by chunk and renamed into place when complete), so a killed rank resumes its
shard by rerunning the same command. `merge_shards` then interleaves the shards in chunk order into STORE in one
commit (store.json is replaced last, as for every append) and removes them: the merged store holds the same ids,
order, metadata and job key as a single-process run of the same call, so rerunning either is a no-op.

On the command line: `torchrun --nproc_per_node=N -m explorer.embed INPUT --model SPEC --out STORE` (or
`unclip-explorer embed ... --distributed` under torchrun); gloo on CPUs, NCCL with one GPU per rank.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from explorer.store.format import MANIFEST, PARTIAL_DIR, SHARDS_DIR, EmbeddingStore
from explorer.store.inputs import Encoder, Record, _unreadable_images
from explorer.store.jobs import (EmbedJob, _chunk_path, check_no_clash, open_partial, open_target, plan_job,
                                 run_chunks)
from unclip_core.atomic import atomic_dir
from unclip_core.checks import check_positive_int

SHARD_KEY = "shard"  # store.json entry of a shard: the job it belongs to and which chunks it holds


def shard_name(rank: int, world_size: int) -> str:
    return f"rank-{rank:05d}-of-{world_size:05d}"


def shard_chunks(n_chunks: int, rank: int, world_size: int) -> list[int]:
    """The chunks rank `rank` of `world_size` embeds: round robin, so ranks get equal work within one chunk."""
    return list(range(rank, n_chunks, world_size))


def _check_rank(rank: int, world_size: int) -> tuple[int, int]:
    world_size = check_positive_int("world_size", world_size)
    if not isinstance(rank, int) or isinstance(rank, bool) or not 0 <= rank < world_size:
        raise ValueError(f"rank={rank!r} must be an integer in [0, {world_size - 1}] (world_size={world_size})")
    return rank, world_size


def embed_shard(encoder: Encoder, job: EmbedJob, out: str | Path, *, rank: int, world_size: int,
                progress: bool = True, on_chunk: Callable[[int, int], None] | None = None) -> EmbeddingStore:
    """Embed this rank's chunks of `job` into the shard store STORE/.shards/rank-...; resumes, and a finished
    shard of the same job is returned as it is."""
    rank, world_size = _check_rank(rank, world_size)
    shards = Path(out) / SHARDS_DIR
    folder = shards / shard_name(rank, world_size)
    if (folder / MANIFEST).exists():
        done = EmbeddingStore.open(folder)
        if done.manifest.get(SHARD_KEY, {}).get("key") == job.key:
            return done
        shutil.rmtree(folder)  # a shard of another call (other inputs or settings)
    ids = shard_chunks(len(job.chunks), rank, world_size)
    partial = shards / f"{shard_name(rank, world_size)}{PARTIAL_DIR}"
    open_partial(partial, job.key, len(job.records), max((len(c[1]) for c in job.chunks), default=1))
    run_chunks(encoder, job, partial, ids, desc=f"embed rank {rank}/{world_size}", progress=progress,
               on_chunk=on_chunk)
    rows = [i for ci in ids for i in job.chunks[ci][1]]
    with atomic_dir(folder) as tmp:
        store = EmbeddingStore.create(tmp, encoder.spec, encoder.model_id, job.dim, job.dtype)
        store._manifest[SHARD_KEY] = {"key": job.key, "rank": rank, "world_size": world_size,
                                      "n_chunks": len(job.chunks), "chunks": ids,
                                      "chunk_rows": [len(job.chunks[ci][1]) for ci in ids],
                                      "n_rows": len(job.records), "skipped": job.skipped}
        blocks = (np.load(_chunk_path(partial, ci), allow_pickle=False) for ci in ids)
        store._commit(blocks, len(rows), job.meta.iloc[rows].reset_index(drop=True), job=job.key)
    shutil.rmtree(partial, ignore_errors=True)
    return EmbeddingStore.open(folder)


def _read_shards(out: Path) -> tuple[list[EmbeddingStore], dict[str, Any]]:
    shards_dir = out / SHARDS_DIR
    folders = sorted(p for p in shards_dir.glob("rank-*-of-*") if p.is_dir() and not p.name.endswith(PARTIAL_DIR)) \
        if shards_dir.is_dir() else []
    if not folders:
        raise FileNotFoundError(f"no finished store shards in {shards_dir}; run the distributed embedding "
                                "(every rank) first")
    shards = [EmbeddingStore.open(f) for f in folders]
    infos = [s.manifest.get(SHARD_KEY) for s in shards]
    if any(i is None for i in infos):
        bad = [str(f) for f, i in zip(folders, infos) if i is None]
        raise ValueError(f"{bad[0]} is a store but not a shard of a distributed embedding (no {SHARD_KEY!r} in its "
                         f"{MANIFEST}); remove it from {shards_dir}")
    first = infos[0]
    for f, i in zip(folders, infos):
        if (i["key"], i["world_size"], i["n_chunks"]) != (first["key"], first["world_size"], first["n_chunks"]):
            raise ValueError(f"the shards in {shards_dir} come from different embed calls ({folders[0].name} and "
                             f"{f.name}); rerun every rank of one call, or remove the stale shard folders")
    world = int(first["world_size"])
    have = {int(i["rank"]) for i in infos}
    missing = sorted(set(range(world)) - have)
    if missing:
        raise ValueError(f"{len(missing)} of {world} ranks have not finished their shard in {shards_dir} (ranks "
                         f"{missing[:8]}); rerun them (a killed rank resumes), then merge")
    return sorted(shards, key=lambda s: s.manifest[SHARD_KEY]["rank"]), first


def merge_shards(out: str | Path, *, progress: bool = True) -> EmbeddingStore:
    """Interleave the finished shards of STORE/.shards into STORE (created or appended to) in the single-process
    chunk order, in one commit, then remove them. Refuses missing ranks, shards of different calls, and ids the
    store already holds."""
    out = Path(out)
    shards, info = _read_shards(out)
    spec, model_id, dim, dtype = shards[0].model_spec, shards[0].model_id, shards[0].dim, shards[0].dtype

    # open_target checks the model by spec and id, taken from the shards: merging loads no model
    store = open_target(out, SimpleNamespace(spec=spec, model_id=model_id), dim, dtype)  # type: ignore[arg-type]
    if info["key"] in store.manifest.get("jobs", []):
        shutil.rmtree(out / SHARDS_DIR, ignore_errors=True)
        return store
    world, n_chunks = int(info["world_size"]), int(info["n_chunks"])
    # (shard, first row, n rows) of every global chunk
    where: list[tuple[int, int, int]] = [(-1, 0, 0)] * n_chunks
    for r, s in enumerate(shards):
        row = 0
        for ci, n in zip(s.manifest[SHARD_KEY]["chunks"], s.manifest[SHARD_KEY]["chunk_rows"]):
            where[ci] = (r, row, n)
            row += n
        if row != len(s):
            raise ValueError(f"shard {s.path} holds {len(s)} rows but its {MANIFEST} lists {row}; rerun its rank")
    meta = pd.concat([shards[r].metadata.iloc[a:a + n] for r, a, n in where], ignore_index=True)
    check_no_clash(store, meta)
    from tqdm.auto import tqdm

    def blocks() -> Iterator[np.ndarray]:
        for r, a, n in tqdm(where, desc=f"merge {world} shards -> {out.name}", unit="chunk", disable=not progress):
            yield np.asarray(shards[r].vectors[a:a + n])

    store._commit(blocks(), len(meta), meta, job=info["key"], skipped=info.get("skipped", []))
    shutil.rmtree(out / SHARDS_DIR, ignore_errors=True)
    return store


def embed_distributed(encoder: Encoder, items: str | Path | Sequence[Any], out: str | Path, *, rank: int,
                      world_size: int, barrier: Callable[[], None] | None = None,
                      all_gather: Callable[[Any], list[Any]] | None = None, kind: str | None = None,
                      batch_size: int = 64, chunk_size: int = 1024,
                      extra_metadata: Mapping[str, Any] | pd.DataFrame | Sequence[Mapping[str, Any]] | None = None,
                      progress: bool = True, dtype: str = "float16", skip_bad: bool = False
                      ) -> EmbeddingStore | None:
    """This rank's part of one embedding call split across `world_size` processes (same arguments on every rank,
    as `embed_items` takes them).

    barrier / all_gather: the process group's (torch.distributed.barrier and a wrapper of all_gather_object);
    with them the image-file check is split across ranks and rank 0 merges the shards once all are done, and every
    rank returns the merged store. Without them (ranks on machines that share no process group) each rank checks
    every file, writes its shard and returns None; run `merge_shards(out)` once all shards are in STORE/.shards.
    """
    rank, world_size = _check_rank(rank, world_size)
    if (barrier is None) != (all_gather is None):
        raise ValueError("pass barrier and all_gather together (both from the process group), or neither")

    def bad_check(records: Sequence[Record], show: bool) -> list[dict[str, Any]]:
        if all_gather is None:
            return _unreadable_images(records, show)
        mine = _unreadable_images(records, show and rank == 0, part=(rank, world_size))
        return sorted((b for part in all_gather(mine) for b in part), key=lambda b: b["row"])

    job = plan_job(encoder, items, kind=kind, batch_size=batch_size, chunk_size=chunk_size,
                   extra_metadata=extra_metadata, progress=progress and rank == 0, dtype=dtype, skip_bad=skip_bad,
                   bad_check=bad_check)
    out = Path(out)
    if (out / MANIFEST).exists():  # read-only checks on every rank, before any work
        target = open_target(out, encoder, job.dim, job.dtype)
        if job.key in target.manifest.get("jobs", []):
            return target
        check_no_clash(target, job.meta)
    embed_shard(encoder, job, out, rank=rank, world_size=world_size, progress=progress)
    if barrier is None:
        return None
    barrier()
    if rank == 0:
        merge_shards(out, progress=progress)
    barrier()
    return EmbeddingStore.open(out)


def run_torchrun(encoder_spec: str, items: str | Path, out: str | Path, *, options: Mapping[str, Any],
                 timeout_s: float = 24 * 3600) -> EmbeddingStore | None:
    """The torchrun entry: join the process group named by torchrun's environment (gloo on CPUs, NCCL when every
    rank has a GPU), load the encoder on this rank's device, embed, merge; returns the merged store."""
    import datetime
    import os

    import torch
    import torch.distributed as dist

    need = [k for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if need:
        raise RuntimeError(f"--distributed runs under torchrun, which sets {need}; start it as `torchrun "
                           "--nproc_per_node=N -m explorer.embed INPUT --model SPEC --out STORE`")
    local = int(os.environ["LOCAL_RANK"])
    cuda = torch.cuda.is_available() and torch.cuda.device_count() > local
    device = f"cuda:{local}" if cuda else "cpu"
    if cuda:
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s))
    try:
        from explorer import api
        encoder = api.load_encoder(encoder_spec) if device == "cpu" else _load_on(encoder_spec, device)

        def gather(obj: Any) -> list[Any]:
            out_list: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(out_list, obj)
            return out_list

        return embed_distributed(encoder, items, out, rank=dist.get_rank(), world_size=dist.get_world_size(),
                                 barrier=dist.barrier, all_gather=gather, **options)
    finally:
        dist.destroy_process_group()


def _load_on(spec: str, device: str) -> Encoder:
    from unclip_core.clip import ClipEncoder
    return ClipEncoder.load(spec, device=device)
