"""Embedding store: round trips, atomic appends, resumable embedding, exact cosine neighbours, errors."""
from __future__ import annotations

import json
import re
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from explorer import api
from explorer.store import (FORMAT_VERSION, EmbeddingStore, atomic_write, embed_items, flatten,
                            resolve_items)

sys.path.insert(0, str(Path(__file__).parent))
from fake_encoder import FakeEncoder  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _meta(n: int, prefix: str = "v") -> pd.DataFrame:
    return pd.DataFrame({"id": [f"{prefix}{i}" for i in range(n)], "kind": ["text"] * n,
                         "source": [f"caption {i}" for i in range(n)], "score_extra": np.arange(n) * 0.5})


def _captions(n: int) -> list[str]:
    colours, shapes = ["red", "green", "blue", "yellow"], ["circle", "square", "triangle"]
    return [f"a {colours[i % 4]} {shapes[i % 3]} number {i}" for i in range(n)]


def _shapes_export(folder: Path, n: int) -> Path:
    """A small captions.jsonl + images/ in the ShapesWorld export format, drawn here with PIL."""
    (folder / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    with open(folder / "captions.jsonl", "w") as fh:
        for i in range(n):
            arr = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
            Image.fromarray(arr).save(folder / "images" / f"{i:05d}.png")
            scene = {"objects": [{"shape": "circle", "colour": "red", "size": "small", "position": [0.25, 0.5]},
                                 {"shape": "square", "colour": "blue", "size": "large", "position": [0.75, 0.5]}],
                     "relation": {"kind": "left of", "a": 0, "b": 1} if i % 2 else None}
            fh.write(json.dumps({"file": f"{i:05d}.png", "caption": f"caption {i}", "scene": scene}) + "\n")
    return folder / "captions.jsonl"


# ----------------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_create_append_open_round_trip(tmp_path, dtype):
    z = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    store = EmbeddingStore.create(tmp_path / "s", "spec-a", "id-a", 8, dtype)
    assert len(store) == 0 and store.vectors.shape == (0, 8)
    store.append(z[:3], _meta(3), model_id="id-a")
    store.append(z[3:], _meta(2, prefix="w"))
    back = EmbeddingStore.open(tmp_path / "s")
    assert len(back) == 5 and back.dim == 8 and back.dtype == dtype
    assert back.model_spec == "spec-a" and back.model_id == "id-a"
    assert isinstance(back.vectors, np.memmap) and not back.vectors.flags.writeable
    np.testing.assert_array_equal(np.asarray(back.vectors), z.astype(dtype))
    assert back.metadata["id"].tolist() == ["v0", "v1", "v2", "w0", "w1"]
    assert back.metadata["score_extra"].tolist() == [0.0, 0.5, 1.0, 0.0, 0.5]
    manifest = json.loads((tmp_path / "s" / "store.json").read_text())
    assert manifest["format_version"] == FORMAT_VERSION and manifest["count"] == 5
    for key in ("model_spec", "model_id", "dim", "dtype", "created", "tool_version"):
        assert key in manifest
    # one live vectors file and one metadata file; the old generations are gone
    names = sorted(p.name for p in (tmp_path / "s").iterdir())
    assert names == ["metadata-000002.parquet", "store.json", "vectors-000002.npy"]
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "s" / "store.json").stat().st_mode & 0o777 == 0o666 & ~umask
    assert back.row_of("w1") == 4


def test_atomic_write_keeps_old_file_when_writer_fails(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")

    def broken(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, broken)
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]


def test_flatten_scene():
    flat = flatten({"objects": [{"shape": "circle", "position": [0.1, 0.2]}], "relation": None}, "scene")
    assert flat == {"scene.objects.n": 1, "scene.objects.0.shape": "circle", "scene.objects.0.position.n": 2,
                    "scene.objects.0.position.0": 0.1, "scene.objects.0.position.1": 0.2,
                    "scene.relation": None}


# ----------------------------------------------------------------------------------------- errors
def test_model_mixing_is_an_error_naming_both(tmp_path):
    store = EmbeddingStore.create(tmp_path / "s", "spec-a", "id-a", 4, "float32")
    with pytest.raises(ValueError, match=r"cannot mix models.*'spec-a'.*'id-a'.*'id-b'"):
        store.append(np.eye(4, dtype=np.float32), _meta(4), model_id="id-b")
    embed_items(FakeEncoder("fake-a", 16, "model-A"), ["x", "y"], tmp_path / "t", progress=False)
    with pytest.raises(ValueError, match=r"cannot mix models.*'fake-a'.*'model-A'.*'fake-b'.*'model-B'"):
        embed_items(FakeEncoder("fake-b", 16, "model-B"), ["z"], tmp_path / "t", progress=False)


def test_open_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no embedding store at .*does not exist"):
        EmbeddingStore.open(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="store.json is missing"):
        EmbeddingStore.open(tmp_path / "empty")
    EmbeddingStore.create(tmp_path / "s", "spec", "id", 4)
    manifest = json.loads((tmp_path / "s" / "store.json").read_text())
    manifest["format_version"] = 99
    (tmp_path / "s" / "store.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="format version 99.*reads version 1"):
        EmbeddingStore.open(tmp_path / "s")
    with pytest.raises(ValueError, match="already exists"):
        EmbeddingStore.create(tmp_path / "s", "spec", "id", 4)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "other.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        EmbeddingStore.create(tmp_path / "busy", "spec", "id", 4)


def test_append_errors(tmp_path):
    store = EmbeddingStore.create(tmp_path / "s", "spec", "id", 4, "float32")
    with pytest.raises(ValueError, match="embedding dimension 3, expected 4"):
        store.append(np.ones((2, 3), np.float32), _meta(2))
    with pytest.raises(ValueError, match="metadata has 3 rows but vectors has 2"):
        store.append(np.ones((2, 4), np.float32), _meta(3))
    with pytest.raises(ValueError, match=r"lacks the columns \['source'\]"):
        store.append(np.ones((1, 4), np.float32), [{"id": "a", "kind": "text"}])
    with pytest.raises(ValueError, match=r"'kind' has \['video'\]; accepted"):
        store.append(np.ones((1, 4), np.float32), [{"id": "a", "kind": "video", "source": "s"}])
    with pytest.raises(ValueError, match="NaN"):
        store.append(np.full((1, 4), np.nan, np.float32), _meta(1))
    store.append(np.ones((1, 4), np.float32), _meta(1))
    with pytest.raises(ValueError, match=r"1 ids are already in the store.*\['v0'\]"):
        store.append(np.ones((1, 4), np.float32), _meta(1))
    with pytest.raises(ValueError, match=r"dtype='float64' is not known; accepted: 'float16', 'float32'"):
        EmbeddingStore.create(tmp_path / "t", "spec", "id", 4, "float64")
    assert len(EmbeddingStore.open(tmp_path / "s")) == 1


def test_embed_input_errors(tmp_path):
    enc = FakeEncoder()
    with pytest.raises(ValueError, match="items is empty"):
        embed_items(enc, [], tmp_path / "s", progress=False)
    (tmp_path / "blank.txt").write_text("\n  \n")
    with pytest.raises(ValueError, match="holds no captions"):
        embed_items(enc, tmp_path / "blank.txt", tmp_path / "s", progress=False)
    with pytest.raises(FileNotFoundError, match="input not found"):
        embed_items(enc, tmp_path / "nope.txt", tmp_path / "s", progress=False)
    (tmp_path / "x.csv").write_text("a")
    with pytest.raises(ValueError, match=r"unknown suffix '.csv'; accepted"):
        embed_items(enc, tmp_path / "x.csv", tmp_path / "s", progress=False)
    with pytest.raises(ValueError, match=r"kind='sound' is not known; accepted: 'image', 'text', 'both'"):
        embed_items(enc, ["a"], tmp_path / "s", kind="sound", progress=False)
    with pytest.raises(ValueError, match="kind='image' does not fit a .txt"):
        (tmp_path / "c.txt").write_text("a cat\n")
        embed_items(enc, tmp_path / "c.txt", tmp_path / "s", kind="image", progress=False)
    with pytest.raises(TypeError, match=r"items\[1\] must be a caption"):
        embed_items(enc, ["a", 3], tmp_path / "s", progress=False)
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        embed_items(enc, ["a"], tmp_path / "s", batch_size=0, progress=False)
    with pytest.raises(TypeError, match="encoder must provide encode_text"):
        embed_items(object(), ["a"], tmp_path / "s", progress=False)
    with pytest.raises(ValueError, match=r"extra_metadata may not set the columns \['id'\]"):
        embed_items(enc, ["a"], tmp_path / "s", extra_metadata={"id": 1}, progress=False)
    with pytest.raises(ValueError, match="extra_metadata has 1 rows but the input has 2 items"):
        embed_items(enc, ["a", "b"], tmp_path / "s", extra_metadata=[{"x": 1}], progress=False)
    embed_items(enc, ["a"], tmp_path / "s", progress=False)
    with pytest.raises(ValueError, match="dim mismatch: the store at .* holds 16-d vectors.* makes 8-d"):
        embed_items(FakeEncoder(dim=8, model_id="fake-16"), ["b"], tmp_path / "s", progress=False)
    with pytest.raises(ValueError, match="ids are already in the store"):
        embed_items(enc, ["other caption"], tmp_path / "s", progress=False)


# ----------------------------------------------------------------------------------------- embedding
def test_embed_list_values_and_extra_metadata(tmp_path):
    enc = FakeEncoder(dim=16)
    caps = _captions(7)
    store = embed_items(enc, caps, tmp_path / "s", batch_size=3, chunk_size=4, dtype="float32",
                        extra_metadata=[{"n": i} for i in range(7)], progress=False)
    np.testing.assert_array_equal(np.asarray(store.vectors), enc.encode_text(caps).numpy())
    assert store.metadata["id"].tolist() == [f"text:{i}" for i in range(7)]
    assert store.metadata["source"].tolist() == caps and store.metadata["n"].tolist() == list(range(7))
    assert not (tmp_path / "s" / ".partial").exists()
    # the same call again is a no-op, not a duplicate
    n_before = enc.n_encoded
    again = embed_items(enc, caps, tmp_path / "s", batch_size=3, chunk_size=4, dtype="float32",
                        extra_metadata=[{"n": i} for i in range(7)], progress=False)
    assert len(again) == 7 and enc.n_encoded == n_before


def test_embed_pil_images_and_paths(tmp_path):
    rng = np.random.default_rng(2)
    ims = [Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)) for _ in range(3)]
    ims[2].save(tmp_path / "third.png")
    enc = FakeEncoder()
    store = embed_items(enc, [ims[0], ims[1], tmp_path / "third.png"], tmp_path / "s", progress=False)
    assert store.metadata["id"].tolist() == ["image:0", "image:1", f"image:{(tmp_path / 'third.png').as_posix()}"]
    assert (store.metadata["kind"] == "image").all()
    np.testing.assert_array_equal(np.asarray(store.vectors), enc.encode_image(ims).astype(np.float16))
    with pytest.raises(TypeError, match=r"items\[0\] is an image \(Image\) but kind='text'"):
        embed_items(enc, [ims[0]], tmp_path / "t", kind="text", progress=False)


def test_embed_captions_jsonl_both_with_scene_columns(tmp_path):
    jsonl = _shapes_export(tmp_path / "export", 5)
    enc = FakeEncoder(dim=16)
    store = embed_items(enc, jsonl, tmp_path / "s", kind="both", chunk_size=2, progress=False,
                        extra_metadata={"split": "train"})
    meta = store.metadata
    assert len(store) == 10 and meta["kind"].tolist() == ["image"] * 5 + ["text"] * 5
    assert meta["id"].tolist()[:2] == ["image:00000.png", "image:00001.png"]
    assert meta["id"].tolist()[5] == "text:00000.png" and meta["source"].tolist()[5] == "caption 0"
    assert meta["scene.objects.0.shape"].tolist() == ["circle"] * 10
    assert meta["scene.objects.1.position.0"].tolist() == [0.75] * 10
    assert pd.isna(meta["scene.relation.kind"][0]) and meta["scene.relation.kind"][1] == "left of"
    assert json.loads(meta["scene"][1])["relation"] == {"a": 0, "b": 1, "kind": "left of"}
    assert (meta["split"] == "train").all() and (meta["caption"][:5] == meta["source"][5:].values).all()
    pix = Image.open(tmp_path / "export" / "images" / "00003.png")
    np.testing.assert_allclose(np.asarray(store.vectors[3], np.float32),
                               enc.encode_image([pix])[0].astype(np.float16), rtol=0, atol=0)
    # the export folder itself is accepted, and a folder of images embeds the images only
    folder = resolve_items(tmp_path / "export")
    assert len(folder) == 10
    images = resolve_items(tmp_path / "export" / "images")
    assert [r.id for r in images][:1] == ["image:00000.png"] and len(images) == 5


def test_captions_jsonl_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"file": "a.png", "caption": "x"}\n{not json\n')
    with pytest.raises(ValueError, match="bad.jsonl line 2 is not JSON"):
        resolve_items(bad)
    bad.write_text('{"file": "a.png"}\n')
    with pytest.raises(ValueError, match="row 1 lacks 'file' or 'caption'"):
        resolve_items(bad)
    bad.write_text('{"file": "a.png", "caption": "x", "id": 7}\n')
    with pytest.raises(FileNotFoundError, match="row 1 names image 'a.png', not found"):
        resolve_items(bad, kind="both")
    (rec,) = resolve_items(bad, kind="text")
    assert (rec.id, rec.source, rec.extra["input_id"]) == ("text:a.png", "x", 7)
    bad.write_text("\n")
    with pytest.raises(ValueError, match="bad.jsonl is empty"):
        resolve_items(bad)


def _run_interrupted(enc, items, out, stop_after):
    class Killed(Exception):
        pass

    def hook(i, n):
        if i + 1 == stop_after:
            raise Killed

    with pytest.raises(Killed):
        embed_items(enc, items, out, batch_size=2, chunk_size=3, progress=False, on_chunk=hook)


def test_resume_after_interruption_equals_clean_run(tmp_path):
    caps = _captions(10)  # chunks of 3: 4 chunks
    clean = embed_items(FakeEncoder(), caps, tmp_path / "clean", batch_size=2, chunk_size=3, progress=False)
    enc = FakeEncoder()
    _run_interrupted(enc, caps, tmp_path / "r", stop_after=2)
    assert enc.n_encoded == 6 and len(EmbeddingStore.open(tmp_path / "r")) == 0
    assert sorted(p.name for p in (tmp_path / "r" / ".partial").iterdir()) == [
        "chunk-000000.npy", "chunk-000001.npy", "job.json"]
    enc2 = FakeEncoder()
    resumed = embed_items(enc2, caps, tmp_path / "r", batch_size=2, chunk_size=3, progress=False)
    assert enc2.n_encoded == 4  # only the two unfinished chunks were encoded
    assert np.asarray(resumed.vectors).tobytes() == np.asarray(clean.vectors).tobytes()
    pd.testing.assert_frame_equal(resumed.metadata, clean.metadata)
    assert not (tmp_path / "r" / ".partial").exists()


def test_changed_call_discards_stale_chunks(tmp_path):
    caps = _captions(10)
    _run_interrupted(FakeEncoder(), caps, tmp_path / "r", stop_after=1)
    with pytest.warns(UserWarning, match="discarding unfinished chunks"):
        store = embed_items(FakeEncoder(), caps[:4], tmp_path / "r", batch_size=2, chunk_size=3, progress=False)
    assert store.metadata["source"].tolist() == caps[:4]


def test_resume_after_sigkill_in_subprocess(tmp_path):
    caps = _captions(12)
    (tmp_path / "caps.txt").write_text("\n".join(caps) + "\n")
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from fake_encoder import FakeEncoder
        from explorer.store import embed_items
        def hook(i, n):
            if i == 1:
                os.kill(os.getpid(), signal.SIGKILL)
        embed_items(FakeEncoder(), {str(tmp_path / 'caps.txt')!r}, {str(tmp_path / 'r')!r},
                    batch_size=2, chunk_size=4, progress=False, on_chunk=hook)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert proc.returncode == -9, proc.stderr
    assert len(list((tmp_path / "r" / ".partial").glob("chunk-*.npy"))) == 2
    enc = FakeEncoder()
    resumed = embed_items(enc, tmp_path / "caps.txt", tmp_path / "r", batch_size=2, chunk_size=4, progress=False)
    clean = embed_items(FakeEncoder(), tmp_path / "caps.txt", tmp_path / "c", batch_size=2, chunk_size=4,
                        progress=False)
    assert enc.n_encoded == 4
    assert np.asarray(resumed.vectors).tobytes() == np.asarray(clean.vectors).tobytes()
    pd.testing.assert_frame_equal(resumed.metadata, clean.metadata)
    assert resumed.metadata["id"].tolist()[:2] == ["text:caps.txt:1", "text:caps.txt:2"]


# ----------------------------------------------------------------------------------------- neighbours
def test_neighbors_orthogonal_unit_vectors(tmp_path):
    eye = np.eye(8, dtype=np.float32)
    mix = ((eye[0] + 2 * eye[1]) / np.sqrt(5)).astype(np.float32)
    z = np.vstack([eye, mix])
    meta = pd.DataFrame({"id": [f"e{i}" for i in range(8)] + ["mix"], "kind": "image",
                         "source": [f"img{i}.png" for i in range(9)]})
    store = EmbeddingStore.create(tmp_path / "s", "spec", "id", 8, "float32").append(z, meta)
    df = store.neighbors(eye[0], k=4)
    assert df["id"].tolist() == ["e0", "mix", "e1", "e2"]  # zero-score ties: lower row first
    np.testing.assert_allclose(df["score"], [1.0, 1 / np.sqrt(5), 0.0, 0.0], atol=1e-7)
    assert df["rank"].tolist() == [1, 2, 3, 4] and df["query"].tolist() == [0] * 4
    df2 = store.neighbors(np.vstack([eye[1], 3 * eye[5]]), k=2)  # cosine ignores the query's norm
    assert df2["id"].tolist() == ["e1", "mix", "e5", "e0"]
    np.testing.assert_allclose(df2["score"], [1.0, 2 / np.sqrt(5), 1.0, 0.0], atol=1e-7)
    assert len(store.neighbors(eye[2], k=100)) == 9  # k beyond the store returns every row
    with pytest.raises(ValueError, match="k must be >= 1, got 0"):
        store.neighbors(eye[0], k=0)
    with pytest.raises(ValueError, match="embedding dimension 3, expected 8"):
        store.neighbors(np.ones(3, np.float32))
    empty = EmbeddingStore.create(tmp_path / "e", "spec", "id", 8)
    with pytest.raises(ValueError, match="is empty; embed items into it first"):
        empty.neighbors(eye[0])


def test_blocked_search_matches_brute_force(tmp_path):
    rng = np.random.default_rng(1)
    z = rng.standard_normal((103, 12)).astype(np.float32)
    store = EmbeddingStore.create(tmp_path / "s", "spec", "id", 12, "float16").append(z, _meta(103))
    q = rng.standard_normal((4, 12)).astype(np.float32)
    zs = np.asarray(store.vectors, np.float32)
    cos = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (zs / np.linalg.norm(zs, axis=1, keepdims=True)).T
    want = np.argsort(-cos, axis=1)[:, :7]
    for block_rows in (5, 64, 1000):
        scores, rows = store.search(q, k=7, block_rows=block_rows)
        np.testing.assert_array_equal(rows, want)
        np.testing.assert_allclose(scores, np.take_along_axis(cos, want, 1), rtol=1e-5)


def test_facade_queries_by_text_id_vector(tmp_path):
    enc = FakeEncoder("test-facade", 16, "facade-id")
    api.register_encoder("test-facade", lambda spec: enc)
    try:
        caps = _captions(6)
        store = api.embed(caps, "test-facade", tmp_path / "s", dtype="float32", progress=False)
        by_text = api.neighbors(tmp_path / "s", text=caps[2], k=3)
        assert by_text["id"].iloc[0] == "text:2" and by_text["score"].iloc[0] == pytest.approx(1.0, abs=1e-6)
        by_id = api.neighbors(store, id="text:4", k=1)
        assert by_id["id"].tolist() == ["text:4"] and by_id["score"].iloc[0] == pytest.approx(1.0, abs=1e-6)
        by_vec = api.neighbors(store, vector=np.asarray(store.vectors[5]), k=2)
        assert by_vec["id"].iloc[0] == "text:5"
        pd.testing.assert_frame_equal(by_text.drop(columns="query"),
                                      api.neighbors(store, vector=enc.encode_text([caps[2]]).numpy(),
                                                    k=3).drop(columns="query"))
        with pytest.raises(ValueError, match=r"exactly one of text, image, vector or id; got \['id', 'text'\]"):
            api.neighbors(store, text="a", id="text:1")
        with pytest.raises(ValueError, match="id 'nope' is not in the store"):
            api.neighbors(store, id="nope")
        api.register_encoder("test-other", lambda spec: FakeEncoder("test-other", 16, "other-id"))
        with pytest.raises(ValueError, match="cannot mix models.*'facade-id'.*'other-id'"):
            api.neighbors(store, text="a red circle", model="test-other")
    finally:
        api.unregister_encoder("test-facade")
        api.unregister_encoder("test-other")


@pytest.mark.slow
def test_neighbors_100k_float16_is_fast(tmp_path):
    import time
    rng = np.random.default_rng(0)
    store = EmbeddingStore.create(tmp_path / "s", "spec", "id", 512, "float16")
    n = 100_000
    meta = pd.DataFrame({"id": [f"r{i}" for i in range(n)], "kind": "image", "source": "x"})
    store.append(rng.standard_normal((n, 512)).astype(np.float16), meta)
    t0 = time.perf_counter()
    df = store.neighbors(np.asarray(store.vectors[123], np.float32), k=10)
    elapsed = time.perf_counter() - t0
    assert df["id"].iloc[0] == "r123" and elapsed < 5.0


def test_unreadable_images_refused_or_skipped_and_recorded(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for k in range(3):
        Image.new("RGB", (8, 8), (40 * k, 0, 0)).save(folder / f"ok{k}.png")
    (folder / "bad.png").write_bytes(os.urandom(64))
    (folder / "cut.png").write_bytes((folder / "ok0.png").read_bytes()[:40])  # truncated PNG
    enc = FakeEncoder()
    with pytest.raises(ValueError, match=r"2 of 5 images cannot be read: .*bad.png \(UnidentifiedImageError\); "
                                         r".*cut.png .*--skip-bad .*nothing was written"):
        embed_items(enc, folder, tmp_path / "s", progress=False)
    assert not (tmp_path / "s").exists()
    store = embed_items(enc, folder, tmp_path / "s", progress=False, skip_bad=True)
    assert len(store) == 3 and sorted(store.metadata["source"].map(lambda s: Path(s).name)) == [
        "ok0.png", "ok1.png", "ok2.png"]
    skipped = json.loads((tmp_path / "s" / "store.json").read_text())["skipped"]
    assert sorted(Path(s["source"]).name for s in skipped) == ["bad.png", "cut.png"]
    assert {s["error"] for s in skipped} <= {"UnidentifiedImageError", "SyntaxError", "OSError"}


def test_damaged_vectors_file_is_named_never_unpickled(tmp_path):
    store = embed_items(FakeEncoder(), ["a", "b", "c"], tmp_path / "s", progress=False)
    vfile = tmp_path / "s" / store._manifest["vectors_file"]
    np.save(vfile, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"vectors file .* is not a plain numeric .npy array \(it holds Python "
                                         r"objects\); the store is damaged or was edited: re-embed it") as e:
        EmbeddingStore.open(tmp_path / "s").vectors
    assert "unsafe" not in str(e.value) and "allow_pickle" not in str(e.value)
    vfile.write_bytes(os.urandom(200))
    with pytest.raises(ValueError, match="is not a plain numeric .npy array"):
        EmbeddingStore.open(tmp_path / "s").vectors
    np.save(vfile, np.zeros((2, 16), np.float16))
    with pytest.raises(ValueError, match=r"holds a float16 array of shape \(2, 16\), but store.json says float16 "
                                         r"\(3, 16\)"):
        EmbeddingStore.open(tmp_path / "s").vectors


def test_metrics_on_a_tiny_store_names_the_side_and_the_fix(tmp_path):
    from explorer import analysis_api
    big = embed_items(FakeEncoder(), [f"c{i}" for i in range(8)], tmp_path / "big", progress=False)
    one = embed_items(FakeEncoder(), ["only"], tmp_path / "one", progress=False)
    with pytest.raises(ValueError, match=r"fake \(.*one, kind text\) has 1 embedding row\(s\); the metric table "
                                         r"needs at least 6 per side .* lower k \(-k\)"):
        analysis_api.metrics(big, one, kind="text")


def _img_meta(n: int, prefix: str) -> list[dict]:
    return [{"id": f"{prefix}{i}", "kind": "image", "source": f"{prefix}{i}.png"} for i in range(n)]


def test_rows_a_store_cannot_hold_are_refused_with_their_ids(tmp_path):
    """Finite values beyond float16 (stored as inf before), all-zero rows (cosine 0 with everything) and NaN
    rows are refused at append, naming row and id; nothing is written; a float32 store takes the large rows."""
    store = EmbeddingStore.create(tmp_path / "s", "m", "mid", 4)
    store.append(np.eye(4, dtype=np.float32)[:2], _img_meta(2, "ok"))
    files = sorted(p.name for p in (tmp_path / "s").iterdir())
    cases = [(np.array([[1, 0, 0, 0], [7e4, 0, 0, 0]], np.float32), r"rows 1 \('big1'\).*beyond float16's range "
              r"\(\|x\| > 65504\).*float32 store"),
             (np.array([[1, 0, 0, 0], [0, 0, 0, 0]], np.float32), r"rows 1 \('zero1'\).*all zeros"),
             (np.array([[np.nan, 0, 0, 0], [1, 0, 0, 0]], np.float32), r"rows \[0\]|row.*NaN")]
    for (vectors, pattern), prefix in zip(cases, ("big", "zero", "nan")):
        with pytest.raises(ValueError, match=pattern):
            store.append(vectors, _img_meta(2, prefix))
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == files and len(EmbeddingStore.open(tmp_path / "s")) == 2
    wide = EmbeddingStore.create(tmp_path / "w", "m", "mid", 4, dtype="float32")
    wide.append(np.array([[7e4, 1, 0, 0]], np.float32), _img_meta(1, "big"))
    assert float(wide.vectors[0, 0]) == 7e4
    # neighbours of a store keep k rows: every score finite
    nb = store.neighbors(np.array([1, 0, 0, 0], np.float32), k=5)
    assert len(nb) == 2 and np.isfinite(nb["score"]).all()


def test_store_files_stay_inside_the_folder_and_truncation_is_named(tmp_path):
    store = EmbeddingStore.create(tmp_path / "s", "m", "mid", 4)
    store.append(np.eye(4, dtype=np.float32), _img_meta(4, "r"))
    mpath = tmp_path / "s" / "store.json"
    good = json.loads(mpath.read_text())
    for key, bad in (("vectors_file", "../../elsewhere.npy"), ("metadata_file", "/etc/passwd"),
                     ("vectors_file", "..")):
        mpath.write_text(json.dumps({**good, key: bad}))
        with pytest.raises(ValueError, match=rf"names {key}='{re.escape(bad)}', which is not a file inside the "
                                             "store folder.*restore store.json"):
            EmbeddingStore.open(tmp_path / "s")
    mpath.write_text(json.dumps(good))
    vfile = tmp_path / "s" / good["vectors_file"]
    vfile.write_bytes(vfile.read_bytes()[:-6])
    with pytest.raises(ValueError, match=rf"{good['vectors_file']} is truncated: \d+ bytes, where its header's "
                                         r"float16 \(4, 4\) array needs \d+.*restore it"):
        EmbeddingStore.open(tmp_path / "s")
