"""clip-retrieval output folders opened in place (numbered .npy shards memory-mapped, parquet metadata) and export."""
import numpy as np
import pandas as pd
import pytest

from explorer import api
from explorer.store import ClipRetrievalStore, EmbeddingStore, export_clip_retrieval, open_store


def _folder(root, shard_rows=(5, 7, 3), dim=8, seed=0):
    rng = np.random.default_rng(seed)
    (root / "img_emb").mkdir(parents=True)
    (root / "text_emb").mkdir()
    (root / "metadata").mkdir()
    all_vec, row = [], 0
    for k, n in enumerate(shard_rows):
        v = rng.normal(size=(n, dim)).astype(np.float16)
        np.save(root / "img_emb" / f"img_emb_{k}.npy", v)
        np.save(root / "text_emb" / f"text_emb_{k}.npy", rng.normal(size=(n, dim)).astype(np.float16))
        pd.DataFrame({"image_path": [f"img/{row + i:05d}.jpg" for i in range(n)],
                      "caption": [f"caption {row + i}" for i in range(n)]}).to_parquet(
            root / "metadata" / f"metadata_{k}.parquet")
        all_vec.append(v)
        row += n
    return np.concatenate(all_vec)


def test_opens_in_place_and_answers_like_a_store_of_ours(tmp_path):
    vec = _folder(tmp_path / "cr")
    store = open_store(tmp_path / "cr")
    assert isinstance(store, ClipRetrievalStore) and len(store) == 15 and store.dim == 8 and store.dtype == "float16"
    assert np.array_equal(store.vectors[3:9], vec[3:9])  # across shard 0 and 1
    assert np.array_equal(store.vectors[[14, 0, 6]], vec[[14, 0, 6]])
    meta = store.metadata
    assert list(meta.columns[:3]) == ["id", "kind", "source"] and meta["source"][7] == "img/00007.jpg"
    assert meta["caption"][12] == "caption 12"
    ours = EmbeddingStore.create(tmp_path / "ours", "m", "mid", 8)
    ours.append(vec.astype(np.float32), [{"id": f"image-{i}", "kind": "image", "source": "x"} for i in range(15)])
    q = np.random.default_rng(1).normal(size=(3, 8)).astype(np.float32)
    a = store.neighbors(q, k=4)
    b = ours.neighbors(q, k=4)
    assert a["id"].tolist() == b["id"].tolist()
    np.testing.assert_allclose(a["score"], b["score"], rtol=1e-5, atol=1e-6)
    assert api.neighbors(tmp_path / "cr", id="image-3", k=1)["id"].tolist() == ["image-3"]
    with pytest.raises(ValueError, match=r"records no CLIP model.*model=SPEC"):
        api.neighbors(tmp_path / "cr", text="a red circle")
    with pytest.raises(ValueError, match=r"read-only"):
        store.append(vec, [])
    text = ClipRetrievalStore(tmp_path / "cr", "text", model_spec="shapes-clip")
    assert len(text) == 15 and text.model_spec == "shapes-clip"


def test_damaged_folders_are_named(tmp_path):
    _folder(tmp_path / "cr")
    (tmp_path / "cr" / "metadata" / "metadata_2.parquet").unlink()
    with pytest.raises(ValueError, match=r"metadata holds 12 rows for 15 image vectors"):
        open_store(tmp_path / "cr").metadata
    with pytest.raises(FileNotFoundError, match=r"no img_emb/img_emb_N.npy files"):
        ClipRetrievalStore(tmp_path / "cr" / "metadata")
    np.save(tmp_path / "cr" / "img_emb" / "img_emb_3.npy", np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match=r"disagree on the dimension: \[5, 8\]"):
        ClipRetrievalStore(tmp_path / "cr")


def test_export_round_trip(tmp_path):
    vec = _folder(tmp_path / "cr")
    ours = EmbeddingStore.create(tmp_path / "ours", "shapes-clip", "mid", 8)
    ours.append(vec.astype(np.float32), [{"id": f"r{i}", "kind": "image", "source": f"{i}.png"} for i in range(15)])
    out = export_clip_retrieval(ours, tmp_path / "exported", shard_rows=6)
    back = open_store(out)
    assert isinstance(back, ClipRetrievalStore) and len(back) == 15 and len(back._files) == 3
    assert back.model_spec == "shapes-clip" and back.model_id == "mid"
    np.testing.assert_array_equal(np.asarray(back.vectors), ours.vectors[:].astype(np.float16))
    assert back.metadata["source"].tolist() == [f"{i}.png" for i in range(15)]
    with pytest.raises(ValueError, match=r"cannot mix models"):
        back.check_model("other-id", "other")


def test_projections_and_metrics_take_a_clip_retrieval_folder(tmp_path):
    from explorer import analysis_api as aa
    _folder(tmp_path / "a", shard_rows=(20, 20), seed=0)
    _folder(tmp_path / "b", shard_rows=(25,), seed=1)
    r = aa.project(tmp_path / "a", method="pca", kind="image")
    assert len(r.frame) == 40 and r.frame["source"][21] == "img/00021.jpg"
    df = aa.metrics(tmp_path / "a", tmp_path / "b", k=3)
    assert len(df) >= 1 and df.select_dtypes("number").notna().all().all()


def test_binding_probes_take_a_store_or_its_clip_retrieval_export(tmp_path):
    """probe_store reads scenes from the rows' metadata: the same probe accuracies from a store of a ShapesWorld
    export and from its clip-retrieval export (image rows)."""
    from explorer import api
    from explorer.binding import probe_store
    from explorer.store import ClipRetrievalStore, export_clip_retrieval
    api.export_shapes(tmp_path / "shapes", n=120, seed=3, progress=False)
    store = api.embed(tmp_path / "shapes", "shapes-clip", tmp_path / "store", progress=False, dtype="float32")
    q = ["shape of the <colour> object", "colour of the <shape> object"]
    ours = probe_store(store, questions=q, n_splits=3)
    assert set(ours["features"]) >= {"z_i", "z_t", "bag", "majority"} and (ours["n"] > 0).all()
    z_i = ours[ours["features"] == "z_i"].set_index("question")["accuracy"]
    majority = ours[ours["features"] == "majority"].set_index("question")["accuracy"]
    assert (z_i > majority).all()  # the bundled CLIP's z_i carries which shape has which colour
    export_clip_retrieval(store, tmp_path / "cr")
    theirs = probe_store(ClipRetrievalStore(tmp_path / "cr"), questions=q, n_splits=3)
    a = theirs[theirs["features"] == "z_i"].set_index("question")["accuracy"]
    pd.testing.assert_series_equal(a, z_i)
    with pytest.raises(ValueError, match="no 'scene' metadata column"):
        probe_store(api.embed(["a red circle", "a blue square"] * 6, "shapes-clip", tmp_path / "t", progress=False))
