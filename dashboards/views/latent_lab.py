"""Latent lab: text -> image, variations, interpolations, text diffs, PCA reconstructions (Ramesh et al. 2022)."""
from __future__ import annotations

import streamlit as st

import explorer
from dashboards import _state as S
from unclip_core.samplers import get_sampler

st.title("Latent lab")
st.caption("unCLIP (DALL·E 2, Ramesh et al. 2022): CLIP text embedding z_t → prior → image embedding z_i → "
           "decoder → upsamplers. Every result downloads as a PNG that carries its model, seed and settings.")

with st.sidebar:
    st.header("Generator")
    spec = st.text_input("Pipeline (folder or bundled name)", value=S.default_model() or "", key="model_spec",
                         help="A folder with pipeline.json (e.g. from `unclip-explorer train`) or a bundled name.")
    seed = int(st.number_input("seed", 0, 2**31 - 1, 0, key="seed"))

if not spec.strip():
    st.info("No generator is loaded. The trained unCLIP generator **shapes-unclip** is not bundled with this "
            "version yet. Start the dashboard with `unclip-explorer dashboard --model PIPELINE_FOLDER` (a folder "
            "with pipeline.json, e.g. written by `unclip-explorer train`), or type that folder in the sidebar. "
            "The Projections and Binding pages work with the bundled CLIP model (shapes-clip) meanwhile.")
    st.stop()
pipe = S.attempt(S.load_pipe, spec.strip())
if pipe is None:
    st.stop()
info = pipe.describe()
sizes = list(info["resolutions"])
with st.sidebar:
    sampling = S.sampling_widget(pipe)
    if sampling is None:  # a combination the config refuses (its message is shown)
        st.stop()
    # default: 256 px (64 -> 256 of the cascade); the last stage to 1024 px is slow on a CPU
    out_px = st.selectbox("output size", sizes, index=min(1, len(sizes) - 1), key="out_px",
                          format_func=lambda px: f"{px} px",
                          help="Each step up runs one more upsampler of the cascade (x4 each).")
    all_up = st.checkbox("run upsamplers left out of the default cascade", value=False, key="all_up",
                         help="A model card leaves out an upsampler that does not beat bicubic resizing.")
_, upsample, left_out = pipe.plan_size(out_px, all_upsamplers=all_up)  # the number of upsamplers to run
if left_out is not None:
    st.info(f"{out_px} px needs upsampler{upsample + 1}, which this pipeline leaves out of its default cascade (it "
            f"does not beat bicubic; see its card): images come at {sizes[upsample]} px, shown enlarged. Tick "
            "'run upsamplers left out of the default cascade' to run it.")
# a latent decoder samples the autoencoder's latents; every tool below shows pixels either way
space = (f" · decoder in latent space ({' × '.join(map(str, info['autoencoder']['latent_shape']))}, decoded to "
         f"{sizes[0]} px by the autoencoder)" if info.get("latent_decoder") else "")
st.caption(f"Model **{info['model']}** · CLIP `{info['clip']}` · stages "
           f"{', '.join(f'{k} ({v / 1e6:.2f}M)' for k, v in info['parameters'].items())}{space} · output {out_px} px")

t2i_tab, var_tab, interp_tab, diff_tab, pca_tab, gallery_tab = st.tabs(
    ["Text → image", "Variations", "Interpolation", "Text diff", "PCA reconstruction", "Gallery"])


def strip(images, labels, key, meta_of):
    """A row of images with labels, each downloadable and addable to the gallery."""
    cols = st.columns(len(images))
    for k, (col, im, label) in enumerate(zip(cols, images, labels)):
        with col:
            st.image(im, caption=label, width=S.image_width(im))
            S.image_result(im, label, meta_of(k), f"{key}-{k}")


def upload(label, key):
    """An uploaded image, None when nothing is uploaded, or None after an error message for a non-image."""
    f = st.file_uploader(label, type=["png", "jpg", "jpeg", "webp", "bmp"], key=key)
    return None if f is None else S.attempt(S.read_upload, f)


# ---------------------------------------------------------------------------------------------- text -> image
with t2i_tab:
    prompt = st.text_input("Prompt", "a small red circle left of a large blue square", key="t2i_prompt",
                           help="ShapesWorld captions state each object's size and where it is, as its training captions do")
    negative = None
    if pipe.takes_negative_prompt:  # the prior's unconditional branch is a text (not a learned null)
        negative = st.text_input("Negative prompt", "", key="t2i_negative",
                                 help="the prior's unconditional text in place of the empty prompt (diffusers' "
                                      "negative_prompt); empty: none").strip() or None
    c1, _ = st.columns([1, 2])
    n = int(c1.number_input("images", 1, 8, 2, key="t2i_n"))
    if st.button("Generate", type="primary", key="t2i_go"):
        problem = S.prompt_problem(pipe.clip, prompt) or (negative and S.prompt_problem(pipe.clip, negative))
        if problem:
            st.error(problem)
        else:
            with st.spinner(f"Generating {n} image(s): prior {sampling.prior_steps} steps, decoder "
                            f"{sampling.decoder_steps} steps…"):
                out = S.attempt(pipe.text_to_image, prompt, n=n, sampling=sampling, upsample=upsample, seed=seed,
                                negative_prompt=negative)
            if out is not None:
                st.session_state["t2i"] = out
    out = st.session_state.get("t2i")
    if out is not None:
        meta = {**out.settings, "task": "text_to_image", "prompt": out.settings["prompts"][0]}
        strip(out.images, [f"{out.settings['prompts'][0]} #{k}" for k in range(len(out.images))], "t2i",
              lambda k: {**meta, "index": k})

# ---------------------------------------------------------------------------------------------- variations
with var_tab:
    st.caption("Variations (sec. 3.1): the image's CLIP embedding z_i decoded from fresh noise with DDIM eta > 0; "
               "what stays is what z_i keeps.")
    var_img = upload("Image", "var_upload")
    c1, c2 = st.columns(2)
    var_n = int(c1.number_input("variations", 1, 8, 4, key="var_n"))
    var_sampling = sampling.replace(eta=1.0) if get_sampler(sampling.decoder_sampler).honours_eta else sampling
    if get_sampler(sampling.decoder_sampler).honours_eta:
        var_sampling = sampling.replace(eta=c2.slider("eta", 0.0, 1.0, 1.0, 0.1, key="var_eta"))
    if st.button("Make variations", type="primary", key="var_go"):
        if var_img is None:
            st.warning("Upload an image first.")
        else:
            with st.spinner(f"Decoding {var_n} variations…"):
                out = S.attempt(pipe.variations, var_img, n=var_n, sampling=var_sampling, seed=seed,
                                upsample=upsample)
            if out is not None:
                st.session_state["var"] = (var_img, out)
    if "var" in st.session_state:
        src, out = st.session_state["var"]
        st.image(src, caption="input", width=128)
        strip(out.images, [f"variation {k}" for k in range(len(out.images))], "var",
              lambda k: {**out.settings, "index": k})

# ---------------------------------------------------------------------------------------------- interpolation
with interp_tab:
    st.caption("Interpolation (sec. 3.2, fig. 4): z_i slerped from a to b; x_T one shared noise (fixed) or the "
               "two DDIM-inverted noises slerped too, so the end frames reconstruct the inputs (inverted).")
    ends = []
    for col, name, default in zip(st.columns(2), "ab", ("a red circle", "a blue square")):
        with col:
            kind = st.radio(f"end {name}", ["caption", "image"], horizontal=True, key=f"ip_{name}_kind")
            if kind == "caption":
                ends.append(st.text_input(f"caption {name}", default, key=f"ip_{name}_text"))
            else:
                ends.append(upload(f"image {name}", f"ip_{name}_upload"))
    c1, c2 = st.columns(2)
    x_T_mode = c1.radio("x_T mode", ["fixed", "inverted"], horizontal=True, key="ip_mode",
                        help="inverted needs images at both ends; it inverts and decodes under the inversion "
                             "guidance (sidebar, 1 by default), the ODE the end frames reconstruct under")
    ip_n = c2.slider("frames", 2, 12, 6, key="ip_n")
    if st.button("Interpolate", type="primary", key="ip_go"):
        problems = [S.prompt_problem(pipe.clip, e) for e in ends if isinstance(e, str)]
        if any(e is None for e in ends):
            st.warning("Upload an image for each image end first.")
        elif any(problems):
            st.error(next(p for p in problems if p))
        else:
            with st.spinner(f"Decoding {ip_n} frames ({x_T_mode} x_T)…"):
                res = S.attempt(explorer.interpolate, pipe, ends[0], ends[1], n_steps=ip_n, x_T_mode=x_T_mode,
                                seed=seed, sampling=sampling, upsample=upsample)
            if res is not None:
                st.session_state["ip"] = res
    res = st.session_state.get("ip")
    if res is not None:
        ts = [float(t) for t in res.frame["t"]]
        st.image(res.images, caption=[f"t={t:.2f}" for t in ts], width=96)
        t_sel = st.select_slider("theta: slerp weight t of end b", options=ts, value=ts[len(ts) // 2],
                                 format_func=lambda t: f"{t:.2f}", key="ip_t")
        k = ts.index(t_sel)
        c1, c2 = st.columns([1, 2])
        with c1:
            st.image(res.images[k], caption=f"frame {k}, t={t_sel:.2f}", width=2 * S.image_width(res.images[k]))
            S.image_result(res.images[k], f"interpolation t={t_sel:.2f}",
                           {**res.settings, "frame": k, "t": t_sel, "model": info["model"], "model_info": info},
                           f"ip-{k}")
        c2.dataframe(res.frame, hide_index=True)

# ---------------------------------------------------------------------------------------------- text diff
with diff_tab:
    st.caption("Text diff (sec. 3.3, fig. 5): z_θ = slerp(z_i, normalize(z_t − z_t0), θ) for θ in [0, θ_max], "
               "x_T held fixed. The paper uses θ_max in 0.25–0.5.")
    src_kind = st.radio("image", ["upload", "first text → image result"], horizontal=True, key="td_src")
    td_img = upload("Image to edit", "td_upload") if src_kind == "upload" else (
        st.session_state["t2i"].images[0] if "t2i" in st.session_state else None)
    c1, c2 = st.columns(2)
    old = c1.text_input("old caption (z_t0)", "a red circle", key="td_old")
    new = c2.text_input("new caption (z_t)", "a blue circle", key="td_new")
    c1, c2, c3 = st.columns(3)
    theta_max = c1.slider("theta_max", 0.0, 1.0, 0.5, 0.05, key="td_theta")
    td_n = c2.slider("frames", 2, 10, 5, key="td_n")
    td_mode = c3.radio("x_T mode", ["inverted", "fixed"], horizontal=True, key="td_mode",
                       help="inverted inverts and decodes under the inversion guidance (sidebar, 1 by default), "
                            "the ODE that frame 0 reconstructs the image under")
    if st.button("Apply text diff", type="primary", key="td_go"):
        problem = S.prompt_problem(pipe.clip, old) or S.prompt_problem(pipe.clip, new)
        if td_img is None:
            st.warning("Upload an image (or generate one on the Text → image tab) first.")
        elif problem:
            st.error(problem)
        else:
            with st.spinner(f"Decoding {td_n} frames…"):
                res = S.attempt(explorer.text_diff, pipe, td_img, old, new, theta_max=theta_max, n_steps=td_n,
                                x_T_mode=td_mode, seed=seed, sampling=sampling, upsample=upsample)
            if res is not None:
                st.session_state["td"] = res
    res = st.session_state.get("td")
    if res is not None:
        thetas = [float(t) for t in res.frame["theta"]]
        strip(res.images, [f"θ={t:.2f}" for t in thetas], "td",
              lambda k: {**res.settings, "frame": k, "theta": thetas[k], "model": info["model"]})
        st.dataframe(res.frame, hide_index=True)

# ---------------------------------------------------------------------------------------------- PCA
with pca_tab:
    st.caption("PCA reconstruction (sec. 5.1, fig. 7): z_i projected onto its first k principal components (fitted "
               "on an embedding store of images made with this pipeline's CLIP) and decoded with a fixed x_T.")
    pca_img = upload("Image", "pca_upload")
    fit_path = st.text_input("Fit store (image embeddings of this CLIP model)", S.default_store(), key="pca_store")
    store = S.attempt(S.open_store, fit_path) if fit_path.strip() else None
    if store is not None:
        dim = store.dim
        meta = store.metadata
        n_fit = int((meta["kind"] == "image").sum()) if "kind" in meta.columns else len(store)
        k_max = max(1, min(n_fit, dim))
        k = st.slider("k (principal components kept)", 1, k_max, min(20, k_max), key="pca_k",
                      help=f"At most min(image rows, dim) = {k_max}; the last column decodes the full z_i (k = {dim}).")
        if st.button("Reconstruct", type="primary", key="pca_go"):
            if pca_img is None:
                st.warning("Upload an image first.")
            else:
                with st.spinner(f"Fitting the PCA on {len(store)} rows and decoding…"):
                    res = S.attempt(explorer.pca_reconstructions, pipe, [pca_img], fit_store=store,
                                    ks=sorted({k, dim}), seed=seed, sampling=sampling, upsample=upsample)
                if res is not None:
                    st.session_state["pca"] = res
    else:
        st.info("Type the folder of an embedding store of images made with this pipeline's CLIP model "
                f"(`unclip-explorer embed IMAGES --model {info['clip']} --out STORE`).")
    res = st.session_state.get("pca")
    if res is not None:
        strip(res.rows[0], ["original"] + [f"k={k}" for k in res.ks], "pca",
              lambda j: {**res.settings, "k": ([None] + res.ks)[j], "model": info["model"]})
        st.dataframe(res.frame, hide_index=True)

# ---------------------------------------------------------------------------------------------- gallery
with gallery_tab:
    gallery = st.session_state.get("gallery", [])
    st.caption(f"{len(gallery)} image(s) kept in this session.")
    if gallery:
        cols = st.columns(4)
        for j, item in enumerate(gallery):
            with cols[j % 4]:
                st.image(item["image"], caption=item["label"], width=S.image_width(item["image"]))
                st.download_button("Download PNG", S.png_bytes(item["image"], item["meta"]),
                                   file_name=f"gallery-{j}.png", mime="image/png", key=f"gdl-{j}")
        if st.button("Clear gallery", key="gallery_clear"):
            st.session_state["gallery"] = []
            st.rerun()
