"""Binding: accuracy per category with intervals, swapped-attribute confusion, failures; compare two runs."""
from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

import explorer
from analyses.binding import model_world
from analyses.binding_suite import make_suite
from unclip_core.data.shapes import CURRENT_WORLD
from dashboards import _state as S
from explorer.binding import accuracy_figure, confusion_figure, failure_gallery, load_run, run_cases, swap_confusion

st.title("Binding")
st.caption("Variable binding (Ramesh et al. 2022, sec. 7): does CLIP keep which attribute belongs to which object? "
           "A case is a hit when the true caption scores strictly above every foil; intervals are Wilson 95%. "
           "See docs/binding.md.")


def show_run(run: dict, cases: list | None, key: str) -> None:
    """Headline accuracies, the per-category chart and table, probes, confusion and failures of one run."""
    settings, summary, clip = run["settings"], run["summary"], run["cases"]
    st.caption(f"Run `{run['folder']}` · model `{settings.get('model')}` · {settings.get('n_cases')} cases · "
               f"seed {settings.get('seed')} · finished {settings.get('finished')}")
    if summary.empty and run["generation_summary"].empty:
        st.warning("This run has no CLIP-level or generation results to show.")
        return
    if not summary.empty:
        heads = summary[summary["category"] == "all"]
        cols = st.columns(max(1, len(heads)))
        for col, r in zip(cols, heads.itertuples()):
            col.metric(f"{r.kind} {r.metric} (all)", f"{r.accuracy:.3f}",
                       help=f"k={r.k} of n={r.n}; 95% interval [{r.lo:.3f}, {r.hi:.3f}]; chance {r.chance:.3f}")
    st.plotly_chart(accuracy_figure(summary, run["generation_summary"]), key=f"{key}_acc", width="stretch")
    if not summary.empty:
        st.dataframe(summary, hide_index=True, key=f"{key}_summary")
    if not run["probes"].empty:
        st.markdown("**Linear probes** (5-fold CV accuracy; z above bag means the latent keeps the binding)")
        st.dataframe(run["probes"].pivot_table(index="question", columns="features", values="accuracy").reset_index(),
                     hide_index=True)
    if not run["generation_summary"].empty:
        st.markdown("**Generation level**")
        st.dataframe(run["generation_summary"], hide_index=True)
    if cases is not None and not clip.empty:
        conf = swap_confusion(clip[clip["kind"] == "caption_pair"], cases)
        st.plotly_chart(confusion_figure(conf), key=f"{key}_conf", width="stretch")
        st.image(failure_gallery(clip, cases), caption="Failures: the image, its caption (+) and the foil CLIP "
                                                       "preferred (−)")
    else:
        st.info("The suite file of this run is gone, so the swapped-attribute confusion is not available.")
        if run["failures"] is not None:
            st.image(str(run["failures"]), caption="Failures: the image, its caption (+) and the foil CLIP "
                                                   "preferred (−)")


load_tab, live_tab, compare_tab = st.tabs(["Load a run", "Run a small suite live", "Compare two runs"])

with load_tab:
    folder = st.text_input("Run folder (the --out of `unclip-explorer binding run`)", "", key="bd_folder")
    if folder.strip():
        run = S.attempt(load_run, folder)
        if run is not None:
            show_run(run, S.attempt(run_cases, run["settings"]), "load")

with live_tab:
    st.caption("A small built-in ShapesWorld suite (caption pairs and Winoground cases), CLIP level.")
    c1, c2, c3, c4 = st.columns(4)
    n = int(c1.number_input("cases", 8, 500, 48, key="live_n"))
    seed = int(c2.number_input("seed", 0, 2**31 - 1, 0, key="live_seed"))
    model = c3.text_input("CLIP model", S.DEFAULT_CLIP, key="live_model")
    probe_n = int(c4.number_input("probe scenes (0 = no probes)", 0, 2000, 0, key="live_probe_n"))
    if st.button("Run suite", type="primary", key="live_go"):
        encoder = S.attempt(S.load_clip, model.strip())
        cases = make_suite(n, seed=seed, kinds=["caption_pair", "winoground"],
                           world=model_world(encoder) if encoder is not None else CURRENT_WORLD)
        runs = st.session_state.get("live_runs", 0) + 1
        st.session_state["live_runs"] = runs
        with st.spinner(f"Scoring {n} cases with {model}…"):
            out = S.attempt(explorer.run_suite, cases, model.strip(), S.session_dir("binding") / f"run-{runs}",
                            seed=seed, probes=probe_n > 0, probe_n=max(probe_n, 1), progress=False)
        if out is not None:
            st.session_state["live"] = (str(out), cases)
    if "live" in st.session_state:
        out, cases = st.session_state["live"]
        run = S.attempt(load_run, out)
        if run is not None:
            show_run(run, cases, "live")

with compare_tab:
    c1, c2 = st.columns(2)
    a = c1.text_input("Run A", "", key="cmp_a")
    b = c2.text_input("Run B", "", key="cmp_b")
    if a.strip() and b.strip():
        with st.spinner("McNemar tests and paired bootstrap…"):
            cmp = S.attempt(explorer.compare_runs, a.strip(), b.strip())
        if cmp is not None:
            st.caption("Paired on case id: exact McNemar on CLIP-level hits and a paired bootstrap interval of "
                       "acc_b − acc_a per category.")
            st.dataframe(cmp, hide_index=True, key="cmp_table")
            t = cmp[cmp["category"] != "all"]
            fig = go.Figure(go.Bar(x=t["kind"] + " / " + t["category"], y=t["diff"],
                                   error_y=dict(type="data", symmetric=False, array=t["hi"] - t["diff"],
                                                arrayminus=t["diff"] - t["lo"])))
            fig.update_layout(title="acc_b − acc_a per category (95% paired bootstrap)", yaxis_title="difference")
            st.plotly_chart(fig, key="cmp_chart", width="stretch")
