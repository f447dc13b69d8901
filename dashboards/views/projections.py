"""Projections: PCA / UMAP / t-SNE maps of an embedding store, selections, neighbours and caption-defined axes."""
from __future__ import annotations

import numpy as np
import streamlit as st

import explorer
from analyses.projection import scatter
from dashboards import _state as S

st.title("Projections")
st.caption("Maps of CLIP embeddings. Drag a box or lasso on the chart to select points; their thumbnails and "
           "metadata appear below, and the selection can be re-projected on its own.")

# ---------------------------------------------------------------------------------------------- source
with st.sidebar:
    st.header("Embeddings")
    source = st.radio("source", ["store folder", "embed captions now"], key="pj_source")
    if source == "store folder":
        store_path = st.text_input("Store folder", S.default_store(), key="pj_store",
                                   help="Made with `unclip-explorer embed INPUT --model SPEC --out STORE`.")
    else:
        captions = st.text_area("Captions, one per line", "a red circle\na blue square\na green triangle\n"
                                "a red square\na blue circle\na green circle", key="pj_captions")
        items_path = st.text_input("…or a path (image folder, captions.jsonl, .txt)", "", key="pj_items")
        embed_model = st.text_input("CLIP model", S.DEFAULT_CLIP, key="pj_embed_model")
        if st.button("Embed", type="primary", key="pj_embed"):
            items = items_path.strip() or [c.strip() for c in captions.splitlines() if c.strip()]
            encoder = S.attempt(S.load_clip, embed_model.strip())
            if not items:
                st.warning("Type at least one caption (or a path) to embed.")
            elif encoder is not None:
                n_runs = st.session_state.get("pj_embed_runs", 0) + 1
                st.session_state["pj_embed_runs"] = n_runs
                out = S.session_dir("embed") / f"store-{n_runs}"
                bar = st.progress(0.0, text="Embedding…")
                n_items = len(items) if isinstance(items, list) else 1000
                store = S.attempt(explorer.embed_items, encoder, items, out, chunk_size=max(8, n_items // 20),
                                  progress=False, on_chunk=lambda i, n: bar.progress((i + 1) / n,
                                                                                     text=f"chunk {i + 1} of {n}"))
                bar.empty()
                if store is not None:
                    st.session_state["pj_embedded"] = str(store.path)
                    st.success(f"embedded {len(store)} rows with {store.model_spec}")
        store_path = st.session_state.get("pj_embedded", "")

if not store_path.strip():
    st.info("Type the folder of an embedding store in the sidebar (or start the dashboard with "
            "`--store DIR`), or embed some captions on the spot.")
    st.stop()
store = S.attempt(S.open_store, store_path)
if store is None:
    st.stop()
stamp = S._store_stamp(store.path)
meta = store.metadata
kinds = sorted(meta["kind"].astype(str).unique()) if "kind" in meta.columns else []

# ---------------------------------------------------------------------------------------------- map
with st.sidebar:
    st.header("Map")
    big = len(store) > S.LARGE_MAP_ROWS
    method = st.selectbox("method", ["pca", "umap"] if big else ["pca", "umap", "tsne"], key="pj_method",
                          help=(f"Above {S.LARGE_MAP_ROWS:,} rows: PCA streamed exactly from the store, UMAP fitted on "
                                "50,000 rows and the rest transformed (minutes; cached beside the store)." if big else
                                "UMAP and t-SNE take seconds to minutes on large stores; PCA is instant."))
    kind_sel = st.selectbox("rows", ["all"] + kinds, index=(1 + kinds.index("image")) if "image" in kinds else 0,
                            key="pj_kind")
    kind = None if kind_sel == "all" else kind_sel
    columns = [c for c in meta.columns if c not in ("id", "source")]
    preferred = next((c for c in ("scene.objects.0.colour",) if c in columns), None) or S.few_valued(meta, columns)
    color_sel = st.selectbox("colour by", ["(none)"] + columns,
                             index=(1 + columns.index(preferred)) if preferred else 0, key="pj_color")
    color = None if color_sel == "(none)" else color_sel
    seed = int(st.number_input("seed", 0, 2**31 - 1, 0, key="pj_seed"))



def _large_map() -> list[int]:
    """The map of a store above LARGE_MAP_ROWS: density of every point, a sample as markers, selections resolved
    against every point; returns the selected store rows."""
    from analyses.store_maps import region_figure, rows_in_region
    m = S.attempt(S.map_large_store, str(store.path), stamp, method, kind, seed)
    if m is None:
        st.stop()
    fig, sample = S.large_map_overview(str(store.path), stamp, method, kind, seed, color)
    fig.update_layout(dragmode="select", height=640, legend_title_text=color or "")
    S.name_colours(fig)
    evr = m.explained_variance_ratio
    if evr is not None:
        fig.update_layout(xaxis_title=f"PC1 ({evr[0]:.1%} of variance)", yaxis_title=f"PC2 ({evr[1]:.1%})")
    else:
        fig.update_layout(xaxis_title=f"{method.upper()} 1", yaxis_title=f"{method.upper()} 2")
    event = st.plotly_chart(fig, on_select="rerun", selection_mode=("box", "lasso"), key="pj_big_chart",
                            width="stretch")
    rec = m.record
    st.caption(f"{len(m.coords):,} points drawn as a density, {len(sample):,} of them as markers · "
               f"{method.upper()} fitted in {rec.get('fit_seconds', 0):.1f} s, rows placed in "
               f"{rec.get('transform_seconds', 0):.1f} s ({'from the cache beside the store' if m.from_cache else 'cached beside the store'}"
               f": `{m.path.name}`)")
    st.subheader("Selection")
    region = S.region_of(event)
    if region is None:
        st.info("Nothing selected yet: drag a box or lasso over the map. Every point inside is selected, not only "
                "the markers.")
        return []
    pos = rows_in_region(m.coords, **region)
    if len(pos) == 0:
        st.warning("The selection holds 0 points: draw the box or lasso over the dense part of the map.")
        return []
    chosen_rows = pos if m.rows is None else m.rows[pos]
    st.markdown(f"**{len(pos):,} selected points** (every point inside the region)")
    head = store.metadata.iloc[chosen_rows[:1000]].assign(x=np.asarray(m.coords[pos[:1000], 0]),
                                                           y=np.asarray(m.coords[pos[:1000], 1]))
    thumbs = S.thumbnail_paths(head, store.path)
    if thumbs:
        st.caption(f"Thumbnails of the first {len(thumbs)} image rows")
        st.image([str(p) for p, _ in thumbs], width=72)
    st.dataframe(head.drop(columns=["x", "y"]), hide_index=True, height=240)
    if len(pos) > 1000:
        st.caption(f"The table shows the first 1,000 of {len(pos):,} rows.")
    # level of detail: the region redrawn point by point (up to 50,000 of them)
    from analyses.store_maps import sample_positions
    keep = pos[sample_positions(len(pos), 50_000, seed)]
    zoom = store.metadata.iloc[keep if m.rows is None else m.rows[keep]][
        [c for c in ("id", color) if c is not None and c in store.metadata.columns]].reset_index(drop=True)
    xy = np.asarray(m.coords[keep])
    zoom["x"], zoom["y"] = xy[:, 0], xy[:, 1]
    axes = (f"PC1 ({evr[0]:.1%} of variance)", f"PC2 ({evr[1]:.1%})") if evr is not None else (
        f"{method.upper()} 1", f"{method.upper()} 2")
    zfig = region_figure(zoom, color=color if color in zoom.columns else None, axis_titles=axes,
                         title=f"The selected region, point by point ({len(keep):,} of {len(pos):,} points)")
    S.name_colours(zfig)
    st.plotly_chart(zfig, key="pj_big_zoom", width="stretch")
    return [int(r) for r in chosen_rows[:1000]]


st.caption(f"Store `{store.path}` · {len(store):,} rows · dim {store.dim} · model `{store.model_spec}` "
           f"(id {store.model_id})")
large = len(store) > S.LARGE_MAP_ROWS
rows: list[int] = []
frame = None
if large:
    rows = _large_map()
else:
    with st.spinner(f"Fitting {method.upper()} on the store's rows…"):
        res = S.attempt(S.project_store, str(store.path), stamp, method, kind, seed)
    if res is None:
        st.stop()
    frame = S.chart_frame(res.frame)
    # large maps carry less hover text: the figure's JSON is most of the time to first render
    hover = ["row"] + [c for c in (("id", "caption", "source") if len(frame) <= 20_000 else ("id",)) if c in frame.columns]
    fig = scatter(frame, color=color, hover=hover, title=f"{method.upper()} of {len(frame)} {kind or 'all'} rows")
    fig.update_layout(dragmode="select", height=560, legend_title_text=color or "")
    S.name_colours(fig)
    evr = res.projection.explained_variance_ratio_
    if evr is not None:
        fig.update_layout(xaxis_title=f"PC1 ({evr[0]:.1%} of variance)", yaxis_title=f"PC2 ({evr[1]:.1%})")
    event = st.plotly_chart(fig, on_select="rerun", selection_mode=("box", "lasso", "points"), key="pj_chart",
                            width="stretch")
    st.caption(f"{len(frame)} points · {method.upper()} fitted in {res.projection.fit_seconds:.2f} s (kept for reruns)")

    # ---------------------------------------------------------------------------------------------- selection
    st.subheader("Selection")
    rows = S.selected_rows(event, frame)
    drew = bool(event and (event.get("selection", {}).get("box") or event.get("selection", {}).get("lasso")))
    c1, c2 = st.columns([1, 2])
    filter_cols = [c for c in frame.columns if c not in ("x", "y", "row")]
    filter_col = c1.selectbox("…or select rows where", filter_cols,
                              index=filter_cols.index("caption") if "caption" in filter_cols else 0, key="pj_filter_col")
    filter_text = c2.text_input("contains", "", key="pj_filter_text", placeholder="e.g. red")
    if not rows and filter_text.strip():
        rows = frame.index[frame[filter_col].astype(str).str.contains(filter_text.strip(), case=False,
                                                                      regex=False)].tolist()
    if not rows:
        if drew or filter_text.strip():
            st.warning("The selection holds 0 points: draw the box or lasso over some points, or change the filter.")
        else:
            st.info("Nothing selected yet: drag a box or lasso over the chart, or filter by a metadata column.")
    else:
        chosen = frame.iloc[rows]
        st.markdown(f"**{len(rows)} selected points**")
        thumbs = S.thumbnail_paths(chosen, store.path)
        if thumbs:
            st.caption(f"Thumbnails of the first {len(thumbs)} image rows (hover a point on the map for its caption)")
            st.image([str(p) for p, _ in thumbs], width=72)
        st.dataframe(chosen.drop(columns=["x", "y"]), hide_index=True, height=240)
        if st.button("Re-project the selection", key="pj_reproject"):
            with st.spinner(f"Fitting {method.upper()} on {len(rows)} points…"):
                sub = S.attempt(S.project_rows, store, chosen["row"].tolist(), method, kind, seed)
            if sub is not None:
                st.session_state["pj_sub"] = sub
    if "pj_sub" in st.session_state:
        sub_frame, sub_proj = st.session_state["pj_sub"]
        st.plotly_chart(scatter(sub_frame, color=color if color in sub_frame.columns else None,
                                hover=[c for c in ("id", "caption") if c in sub_frame.columns],
                                title=f"{method.upper()} of the {len(sub_frame)} selected points").for_each_trace(
                            S.name_colour),
                        key="pj_sub_chart", width="stretch")

# ---------------------------------------------------------------------------------------------- neighbours
st.subheader("Nearest neighbours")
c1, c2, c3 = st.columns([1, 2, 1])
by = c1.radio("query", ["caption", "point id"], key="nn_by")
if frame is not None:
    first_id = str(frame.iloc[rows[0]]["id"]) if rows else str(frame.iloc[0]["id"])
else:  # large map: rows are store rows
    first_id = str(meta.iloc[rows[0] if rows else 0]["id"])
query = c2.text_input("caption" if by == "caption" else "id of a row",
                      "a red circle" if by == "caption" else first_id, key=f"nn_query_{by}")
k = int(c3.number_input("k", 1, 100, 8, key="nn_k"))
query_model = st.text_input("Query model (CLIP spec; must be the store's)", store.model_spec, key="nn_model")
if st.button("Find neighbours", key="nn_go"):
    nn = None
    if by == "caption":
        encoder = S.attempt(S.load_clip, query_model.strip())
        problem = S.prompt_problem(encoder, query) if encoder is not None else None
        if problem:
            st.error(problem)
        elif encoder is not None:
            nn = S.attempt(explorer.neighbors, store, text=query, k=k, model=encoder)
    else:
        nn = S.attempt(explorer.neighbors, store, id=query.strip(), k=k)
    if nn is not None:
        st.session_state["nn"] = nn
nn = st.session_state.get("nn")
if nn is not None:
    st.dataframe(nn[["rank", "score", "id", "kind", "source"]], hide_index=True)
    thumbs = S.thumbnail_paths(nn, store.path)
    if thumbs:
        st.image([str(p) for p, _ in thumbs], caption=[f"#{j + 1}" for j in range(len(thumbs))], width=72)

# ---------------------------------------------------------------------------------------------- custom axes
st.subheader("Custom axes")
st.caption("As in the TensorFlow Embedding Projector: x = cos(z, d1), y = cos(z, d2), with "
           "d = normalize(z_t(a) − z_t(b)) for two captions a, b per axis (latent arithmetic by eye).")
c1, c2, c3, c4 = st.columns(4)
xa = c1.text_input("x: a", "a red circle", key="ax_xa")
xb = c2.text_input("x: b", "a blue circle", key="ax_xb")
ya = c3.text_input("y: a", "a small circle", key="ax_ya")
yb = c4.text_input("y: b", "a large circle", key="ax_yb")
if st.button("Project onto these axes", key="ax_go"):
    encoder = S.attempt(S.load_clip, query_model.strip())
    problem = next((p for p in (S.prompt_problem(encoder, c) for c in (xa, xb, ya, yb)) if p), None) \
        if encoder is not None else None
    if problem:
        st.error(problem)
    elif encoder is not None:
        ax = S.attempt(S.custom_axes, store, encoder, (xa, xb), (ya, yb), kind)
        if ax is not None:
            st.session_state["ax"] = (ax, (xa, xb, ya, yb))
if "ax" in st.session_state:
    ax, (xa_, xb_, ya_, yb_) = st.session_state["ax"]
    if len(ax) > 100_000:  # a large store: draw a fixed sample of the rows
        ax = ax.sample(100_000, random_state=0)
    ax_fig = scatter(ax, color=color if color in ax.columns else None,
                     hover=[c for c in ("id", "caption") if c in ax.columns],
                     title="Caption-defined axes" + (" (100,000 rows drawn)" if len(ax) == 100_000 else ""))
    S.name_colours(ax_fig)
    ax_fig.update_layout(xaxis_title=f"cos(z, '{xa_}' − '{xb_}')", yaxis_title=f"cos(z, '{ya_}' − '{yb_}')")
    st.plotly_chart(ax_fig, key="ax_chart", width="stretch")
