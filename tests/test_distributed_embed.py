"""Distributed embedding: ranks embed disjoint shards that merge into the single-process store; webdataset tars."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from explorer.store import EmbeddingStore, SHARDS_DIR, embed_items, resolve_items
from explorer.store.distributed import embed_distributed, embed_shard, merge_shards, shard_chunks
from explorer.store.jobs import plan_job

sys.path.insert(0, str(Path(__file__).parent))
from fake_encoder import FakeEncoder  # noqa: E402
from test_store import _shapes_export  # noqa: E402


CAPTIONS = ["a red circle", "a small blue square", "a large green triangle", "a yellow star", "a purple circle",
            "a small red square left of a blue circle", "an orange square"]


def _same_store(a: EmbeddingStore, b: EmbeddingStore) -> None:
    assert len(a) == len(b)
    np.testing.assert_array_equal(np.asarray(a.vectors), np.asarray(b.vectors))
    pd.testing.assert_frame_equal(a.metadata, b.metadata)
    assert a.manifest["jobs"] == b.manifest["jobs"]


def _tar_shards(folder: Path, n_shards: int, per_shard: int) -> list[Path]:
    """webdataset shards written by hand: KEY.png + KEY.txt (+ KEY.json) per sample."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    paths = []
    for s in range(n_shards):
        path = folder / f"shard-{s:03d}.tar"
        with tarfile.open(path, "w") as tf:
            for i in range(per_shard):
                key = f"{s:03d}{i:04d}"
                buf = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buf, format="PNG")
                members = {"png": buf.getvalue(), "txt": CAPTIONS[(s * per_shard + i) % len(CAPTIONS)].encode(),
                           "json": json.dumps({"width": 8, "source_url": f"http://x/{key}"}).encode()}
                for ext, data in members.items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
        paths.append(path)
    return paths


def test_shard_chunks_round_robin_cover_every_chunk_once():
    parts = [shard_chunks(11, r, 3) for r in range(3)]
    assert parts == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8]]
    assert sorted(c for p in parts for c in p) == list(range(11))
    with pytest.raises(ValueError, match=r"rank=3 must be an integer in \[0, 2\]"):
        embed_shard(FakeEncoder(), None, "x", rank=3, world_size=3)  # type: ignore[arg-type]


@pytest.mark.parametrize("world", [2, 3])
def test_shards_merge_into_the_single_process_store(tmp_path, world):
    src = _shapes_export(tmp_path / "src", 23)  # 46 rows, chunks of 5: uneven shards
    enc = FakeEncoder(dim=12)
    single = embed_items(enc, src, tmp_path / "single", chunk_size=5, batch_size=2, progress=False)
    for rank in reversed(range(world)):  # ranks finish in any order
        assert embed_distributed(enc, src, tmp_path / "dist", rank=rank, world_size=world, chunk_size=5,
                                 batch_size=2, progress=False) is None
    shards = sorted(p.name for p in (tmp_path / "dist" / SHARDS_DIR).iterdir())
    assert shards == [f"rank-{r:05d}-of-{world:05d}" for r in range(world)]
    merged = merge_shards(tmp_path / "dist", progress=False)
    _same_store(merged, single)
    assert not (tmp_path / "dist" / SHARDS_DIR).exists()
    # the merged store is the single-process job: rerunning it there is a no-op
    n = enc.n_encoded
    embed_items(enc, src, tmp_path / "dist", chunk_size=5, batch_size=2, progress=False)
    assert enc.n_encoded == n


def test_killed_rank_resumes_its_shard_and_merge_refuses_missing_ranks(tmp_path):
    src = _shapes_export(tmp_path / "src", 20)
    enc = FakeEncoder(dim=8)
    job = plan_job(enc, src, chunk_size=4, batch_size=4, progress=False)
    assert len(job.chunks) == 10

    def die(i, n):
        if i == 3:
            raise KeyboardInterrupt  # rank 1 killed after its chunks 1 and 3

    with pytest.raises(KeyboardInterrupt):
        embed_shard(enc, job, tmp_path / "s", rank=1, world_size=2, progress=False, on_chunk=die)
    assert not (tmp_path / "s" / SHARDS_DIR / "rank-00001-of-00002").exists()  # no half shard
    with pytest.raises(FileNotFoundError, match="no finished store shards"):
        merge_shards(tmp_path / "s", progress=False)
    before = enc.n_encoded
    embed_shard(enc, job, tmp_path / "s", rank=1, world_size=2, progress=False)
    assert enc.n_encoded - before == 3 * 4  # chunks 5, 7, 9 only: 1 and 3 were kept
    with pytest.raises(ValueError, match=r"1 of 2 ranks have not finished .*ranks \[0\]"):
        merge_shards(tmp_path / "s", progress=False)
    embed_shard(enc, job, tmp_path / "s", rank=0, world_size=2, progress=False)
    merged = merge_shards(tmp_path / "s", progress=False)
    _same_store(merged, embed_items(FakeEncoder(dim=8), src, tmp_path / "one", chunk_size=4, batch_size=4,
                                    progress=False))


def test_shards_of_different_calls_are_refused(tmp_path):
    src = _shapes_export(tmp_path / "src", 6)
    enc = FakeEncoder(dim=8)
    embed_shard(enc, plan_job(enc, src, chunk_size=2, progress=False), tmp_path / "s", rank=0, world_size=2,
                progress=False)
    embed_shard(enc, plan_job(enc, src, chunk_size=3, progress=False), tmp_path / "s", rank=1, world_size=2,
                progress=False)
    with pytest.raises(ValueError, match="come from different embed calls"):
        merge_shards(tmp_path / "s", progress=False)


def test_webdataset_tar_inputs(tmp_path):
    tars = _tar_shards(tmp_path / "wds", n_shards=3, per_shard=4)
    recs = resolve_items(str(tmp_path / "wds" / "shard-{000..002}.tar"))
    assert [r.kind for r in recs].count("image") == 12 and [r.kind for r in recs].count("text") == 12
    assert recs[0].id == "image:shard-000.tar/0000000" and recs[0].extra["caption"] == "a red circle"
    assert recs[0].extra["source_url"] == "http://x/0000000"
    assert [r.id for r in resolve_items(tmp_path / "wds")] == [r.id for r in recs]  # a folder of shards
    enc = FakeEncoder(dim=8)
    store = embed_items(enc, tars[1], tmp_path / "s", kind="image", progress=False)
    # the image read in place from the tar is the one written into it
    with tarfile.open(tars[1]) as tf:
        im = Image.open(io.BytesIO(tf.extractfile("0010002.png").read())).convert("RGB")
    row = store.row_of("image:shard-001.tar/0010002")
    np.testing.assert_allclose(np.asarray(store.vectors[row], dtype=np.float32),
                               enc._vec(im.tobytes()), atol=1e-3)
    with pytest.raises(FileNotFoundError, match=r"1 tar shard\(s\) not found"):
        resolve_items(str(tmp_path / "wds" / "shard-{000..003}.tar"))
    with pytest.raises(ValueError, match="counts down"):
        resolve_items(str(tmp_path / "wds" / "shard-{002..000}.tar"))
    # a corrupt image inside a shard is named (and skipped on request)
    bad = tmp_path / "bad.tar"
    with tarfile.open(bad, "w") as tf:
        for name, data in (("a.png", b"not a png"), ("a.txt", b"x"), ("b.png", tars[0].read_bytes()[:0] or b"")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    with pytest.raises(ValueError, match=r"2 of 2 images cannot be read: .*bad.tar::a.png"):
        embed_items(enc, bad, tmp_path / "b", progress=False)
    assert not (tmp_path / "b").exists()


def _torchrun(args: list[str], tmp_path: Path, port: int) -> subprocess.CompletedProcess:
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([str(torchrun), "--nproc_per_node=2", f"--master_port={port}", "-m", "explorer.embed",
                           *args], env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)


def test_torchrun_two_gloo_ranks_equal_one_process(tmp_path):
    """The command researchers run: 2 CPU ranks (gloo) over webdataset shards with the bundled CLIP."""
    _tar_shards(tmp_path / "wds", n_shards=2, per_shard=9)
    from explorer import api
    single = api.embed(tmp_path / "wds", "shapes-clip", tmp_path / "single", chunk_size=4, batch_size=4,
                       progress=False)
    proc = _torchrun([str(tmp_path / "wds"), "--model", "shapes-clip", "--out", str(tmp_path / "dist"),
                      "--chunk-size", "4", "--batch-size", "4", "--no-progress"], tmp_path, 29533)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "36 vectors" in proc.stdout and "merged from 2 ranks" in proc.stdout
    dist = EmbeddingStore.open(tmp_path / "dist")
    assert dist.metadata["id"].tolist() == single.metadata["id"].tolist()
    np.testing.assert_allclose(np.asarray(dist.vectors, np.float32), np.asarray(single.vectors, np.float32),
                               atol=1e-3)  # float16 storage; the batches are the same, so equal in practice
    assert dist.manifest["jobs"] == single.manifest["jobs"]
