"""The demo job of README command 1: a ShapesWorld sample embedded with the bundled CLIP, neighbour queries,
a PCA map of the embeddings and, when the bundled generator is present, unCLIP pictures; one index.html.
"""
from __future__ import annotations

import html
import json
import os
import shutil
import time
import urllib.parse
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from analyses.binding import model_world
from explorer import api
from unclip_core.atomic import atomic_write
from unclip_core.checkpoint import list_bundled
from unclip_core.checks import check_choice, check_positive_int
from unclip_core.sampling import SamplingConfig, check_sampling
from explorer.records import run_record, save_png, write_record

# words of every ShapesWorld version (no hexagon, no cross), so the demo runs on v1 and v2 models alike
QUERIES = ("a red circle left of a blue square", "a small yellow star at the top",
           "a green star above a purple triangle")


# ------------------------------------------------------------------------------------------ unCLIP pictures
AUTO = "auto"
DEFAULT_PIPELINE = "shapes-unclip"
NO_PIPELINE = ("none", "")
# captions in the training grammar, which states each object's size and where it is; a caption without them is
# outside it (the shapes-unclip card measures that: 9 of 30 position-free one-object captions drawn right)
DEMO_CAPTIONS = ("a large red circle on the left", "a small blue square at the top",
                 "a small yellow star left of a large green triangle")
VARIATION_SCENE = "a purple star above an orange circle"
INTERPOLATION_SCENES = ("a large red circle", "a large blue square")
TEXT_DIFF = ("a red circle", "a blue circle")
TEXT_DIFF_SCENE = "a large red circle"


@dataclass(frozen=True)
class GeneratorSettings:
    """Knobs of the demo's unCLIP pictures (Ramesh et al. 2022, figs. 3-5), sized for ~2 minutes on a 2-core CPU.

    captions x n_seeds text-to-image cells; n_variations variations (pipe.variation_sampling: DDIM eta 1);
    n_frames interpolation frames with DDIM-inverted x_T; n_theta text-diff frames up to theta_max. sampling: a
    dict of SamplingConfig fields (or a whole SamplingConfig) over the pipeline's own settings, which are the ones
    its card was measured with (shapes-unclip: 25 prior and 25 decoder DDIM steps, guidance 4 and 3; inversion
    under guidance 1 with 3 fixed-point iterations per step, so the inverted frames reconstruct). Pictures stay
    at the decoder's resolution; cascade_stages upsamplers (None: the first one if the pipeline has one; 2 = the
    full cascade) are run on one text-to-image cell.
    """

    captions: tuple[str, ...] = DEMO_CAPTIONS
    n_seeds: int = 2
    n_variations: int = 3
    n_frames: int = 5
    n_theta: int = 4
    theta_max: float = 0.5
    cascade_stages: int | None = None
    sampling: Any = None

    def __post_init__(self) -> None:
        if isinstance(self.captions, str) or not isinstance(self.captions, tuple) or not self.captions:
            raise TypeError(f"captions must be a non-empty tuple of caption strings, e.g. {DEMO_CAPTIONS[:2]}, "
                            f"got {self.captions!r}")
        for i, c in enumerate(self.captions):
            if not isinstance(c, str) or not c.strip():
                raise ValueError(f"captions[{i}] must be a non-empty string, got {c!r}")
        for name in ("n_seeds", "n_variations"):
            check_positive_int(name, getattr(self, name))
        check_positive_int("n_frames", self.n_frames, minimum=2)
        check_positive_int("n_theta", self.n_theta, minimum=2)
        if self.sampling is not None and not isinstance(self.sampling, SamplingConfig):
            check_sampling(self.sampling, SamplingConfig())  # field names and values, before any work
            object.__setattr__(self, "sampling", dict(self.sampling))
        if isinstance(self.theta_max, bool) or not isinstance(self.theta_max, (int, float)) \
                or not 0.0 <= self.theta_max <= 1.0:
            raise ValueError(f"theta_max must lie in [0, 1] (the paper uses 0.25-0.5), got {self.theta_max!r}")
        if self.cascade_stages is not None:
            check_choice("cascade_stages", self.cascade_stages, (0, 1, 2))


def default_pipeline() -> str | None:
    """The bundled generator the demo uses when none is named: "shapes-unclip" once it is bundled, else None."""
    return DEFAULT_PIPELINE if DEFAULT_PIPELINE in list_bundled() else None


def _resolve_pipeline(pipeline: str | Path | None) -> tuple[str | None, str]:
    """(spec or None, why there is none) for run_demo's `pipeline` argument."""
    if pipeline is None or (isinstance(pipeline, str) and pipeline.strip().lower() in NO_PIPELINE):
        return None, "No generator pipeline was requested (--pipeline none), so no unCLIP pictures were made."
    if isinstance(pipeline, str) and pipeline == AUTO:
        spec = default_pipeline()
        if spec is None:
            return None, (f"The generator pipeline <code>{DEFAULT_PIPELINE}</code> is not bundled yet, so no unCLIP "
                          "pictures were made. Pass one with <code>unclip-explorer demo --pipeline DIR</code> "
                          "(a pipeline folder, e.g. one written by <code>unclip-explorer import karlo</code> or "
                          "<code>save_pipeline</code>).")
        return spec, ""
    if not isinstance(pipeline, (str, Path)):
        raise TypeError(f"pipeline must be a bundled name, a pipeline folder, 'auto' or None, "
                        f"got {type(pipeline).__name__}")
    return str(pipeline), ""


def _load_pipeline(spec: str) -> Any:
    try:
        return api.load_pipeline(spec)
    except (ValueError, FileNotFoundError) as exc:
        raise type(exc)(f"pipeline {spec!r} could not be loaded: {exc}; pass --pipeline with a pipeline folder "
                        f"or a bundled name, or --pipeline none to skip the unCLIP pictures") from None


def _clip_world(model: str) -> int:
    """The ShapesWorld version the demo's CLIP reads (the bundled models' for a CLIP trained on other data)."""
    from unclip_core.clip import bundled_world
    world = getattr(api.load_encoder(model), "world", None)
    return int(world) if world is not None else bundled_world()


def _render(caption_text: str, seed: int, size: int, world: int) -> Image.Image:
    from unclip_core.data.shapes import complete, parse, render
    return render(complete(parse(caption_text, world=world), seed), size=size)


def _save_input(folder: Path, caption_text: str, seed: int, size: int, world: int) -> Path:
    """Render a scene to folder/inputs/<caption-slug>.png (the name labels the interpolation grid's row)."""
    image = _render(caption_text, seed, size, world)
    slug = "-".join(caption_text.split())
    return save_png(image, folder / "inputs" / f"{slug}.png",
                    {"kind": "ShapesWorld render", "scene": caption_text, "seed": seed, "size": size, "world": world})


AGREE_RGB, DISAGREE_RGB = (40, 200, 90), (230, 40, 40)


def readout_agreement(images: list[Image.Image], captions: list[str], world: int) -> list[bool]:
    """Whether the read-out finds in each image everything its caption says (shape, colour, size, position,
    count, relation), judged in ShapesWorld version `world`."""
    from unclip_core.data.readout import MIN_READ_SIZE, READ_SIZE, score_attributes
    from unclip_core.data.shapes import parse
    readable = [im.convert("RGB").resize((READ_SIZE, READ_SIZE), Image.BICUBIC) if min(im.size) < MIN_READ_SIZE
                else im.convert("RGB") for im in images]
    scores = score_attributes(readable, [parse(c, world=world) for c in captions])
    per_image = scores.groupby("image")["all_correct"].all()
    return [bool(per_image.get(i, False)) for i in range(len(images))]


def _framed(image: Image.Image, agrees: bool, width: int = 3) -> Image.Image:
    """The image inside a green (the read-out agrees with its caption) or red (it does not) frame."""
    im = image.convert("RGB")
    out = Image.new("RGB", (im.width + 2 * width, im.height + 2 * width), AGREE_RGB if agrees else DISAGREE_RGB)
    out.paste(im, (width, width))
    return out


def _write_csv(path: Path, df: pd.DataFrame) -> Path:
    return atomic_write(path, lambda p: df.to_csv(p, index=False))


def _settings_table(settings: dict[str, Any]) -> str:
    rows = []
    for key in sorted(settings):
        value = settings[key]
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        rows.append(f"<tr><th>{html.escape(str(key))}</th><td>{html.escape(text)}</td></tr>")
    return "<table class='settings'>" + "".join(rows) + "</table>"


def run_generator(pipe: Any, folder: str | Path, seed: int = 0, settings: GeneratorSettings | None = None,
                  progress: bool = True) -> list[dict[str, Any]]:
    """Write the demo's unCLIP pictures into `folder` (Ramesh et al. 2022, figs. 3-5) -> one record per figure.

    Text-to-image grid (rows = captions, columns = seeds seed, seed+1, ...; each cell also a PNG), variations
    of a render, image->image interpolation with DDIM-inverted x_T slerped, the text diff "a red circle" ->
    "a blue circle" on a red circle (with its similarity CSV) and the upsampler cascade on one cell. Every PNG
    records the settings that made it. Records: title, image (path relative to folder), caption, settings,
    files (other outputs), seconds.
    """
    from analyses._pipe import check_pipe
    from analyses.interpolation import interpolation_grid
    from analyses.text_diff import text_diff
    from explorer.grids import make_grid, save_grid
    from unclip_core.imageio import tensor_to_pil
    from unclip_core.provenance import tensor_hash

    check_pipe(pipe)
    settings = GeneratorSettings() if settings is None else settings
    if not isinstance(settings, GeneratorSettings):
        raise TypeError(f"settings must be a GeneratorSettings, got {type(settings).__name__}")
    check_positive_int("seed", seed, minimum=0)
    n_up = len(pipe.upsamplers)
    stages = min(1, n_up) if settings.cascade_stages is None else settings.cascade_stages
    if stages > n_up:
        raise ValueError(f"cascade_stages={stages} needs {stages} upsamplers but pipeline "
                         f"{getattr(pipe, 'name', '?')!r} has {n_up}; pass cascade_stages <= {n_up} "
                         "(drop --full-cascade)")
    s = settings
    sc = check_sampling(s.sampling, pipe.sampling)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = pipe.describe()
    world = model_world(pipe)
    size = min(1024, max(32, int(pipe.resolutions[0])))
    records: list[dict[str, Any]] = []
    say = print if progress else (lambda *a, **kw: None)

    # text -> prior -> decoder, one call per seed column (fig. 3)
    t0 = time.perf_counter()
    seeds = [seed + j for j in range(s.n_seeds)]
    rows: list[list[Image.Image]] = [[] for _ in s.captions]
    cells, first, n_agree = [], None, 0
    for j, cell_seed in enumerate(seeds):
        say(f"text-to-image: seed {cell_seed} ({j + 1}/{len(seeds)})")
        out = pipe.text_to_image(list(s.captions), n=1, sampling=sc, upsample=False, seed=cell_seed,
                                 progress=progress)
        agrees = readout_agreement(list(out.images), list(s.captions), world)
        for i, (caption_text, image) in enumerate(zip(s.captions, out.images)):
            meta = {**out.settings, "demo": "text_to_image", "prompt": caption_text, "seed": cell_seed,
                    "row": i, "column": j, "stage": "decoder", "z_i_hash": tensor_hash(out.z_i[i]),
                    "readout_agrees": agrees[i], "world": world}
            path = save_png(image, folder / "text_to_image" / f"r{i}-seed{cell_seed}.png", meta)
            cells.append(str(path.relative_to(folder)))
            rows[i].append(_framed(image, agrees[i]))
            n_agree += agrees[i]
        if first is None:
            first = (out.stages["decoder"][:1], {**out.settings, "prompt": s.captions[0], "seed": cell_seed,
                                                 "z_i_hash": tensor_hash(out.z_i[0])})
    grid_settings = {"demo": "text_to_image", "captions": list(s.captions), "seeds": seeds,
                     "sampling": sc.to_dict(), "world": world,
                     "readout_agrees": f"{n_agree} of {len(cells)}", **model}
    grid = make_grid(rows, list(s.captions), [f"seed {x}" for x in seeds])
    save_grid(grid, folder / "text_to_image.png", grid_settings)
    records.append({"title": "Text to image", "image": "text_to_image.png", "files": cells,
                    "caption": f"Rows are captions, columns are seeds: prior z_i (best of {sc.best_of}) decoded with "
                               f"{sc.decoder_sampler.upper()} ({sc.decoder_steps} steps). A green "
                               f"frame: the ShapesWorld v{world} read-out finds everything the caption says; red: it "
                               f"does not ({n_agree} of {len(cells)} cells agree).",
                    "settings": grid_settings, "seconds": round(time.perf_counter() - t0, 1)})

    # variations: the image's z_i decoded from fresh noise with DDIM eta > 0 (sec. 3.1, fig. 3)
    t0 = time.perf_counter()
    say("variations")
    var_input = _save_input(folder, VARIATION_SCENE, seed, size, world)
    var_sc = check_sampling(s.sampling, pipe.variation_sampling())
    out = pipe.variations(var_input, n=s.n_variations, sampling=var_sc, seed=seed, upsample=False, progress=progress)
    var_files = []
    for k, image in enumerate(out.images):
        meta = {**out.settings, "demo": "variations", "input": str(var_input.relative_to(folder)), "index": k,
                "seed": seed, "stage": "decoder"}
        var_files.append(str(save_png(image, folder / "variations" / f"{k:02d}.png", meta).relative_to(folder)))
    var_settings = {**out.settings, "demo": "variations", "input_scene": VARIATION_SCENE, "seed": seed,
                    "n_variations": s.n_variations}
    var_settings.pop("z_i_hash", None)
    grid = make_grid([[Image.open(var_input).convert("RGB")] + list(out.images)], None,
                     ["input"] + [f"#{k}" for k in range(s.n_variations)])
    save_grid(grid, folder / "variations.png", var_settings)
    records.append({"title": "Variations", "image": "variations.png",
                    "files": [str(var_input.relative_to(folder))] + var_files,
                    "caption": f"A render of '{VARIATION_SCENE}' and {s.n_variations} decodings of its CLIP image "
                               f"embedding from fresh noise ({var_sc.decoder_sampler.upper()} eta {var_sc.eta:g}).",
                    "settings": var_settings, "seconds": round(time.perf_counter() - t0, 1)})

    # image -> image: z_i slerped, x_T of both ends DDIM-inverted and slerped (sec. 3.2, fig. 4)
    t0 = time.perf_counter()
    say("interpolation")
    ends = [_save_input(folder, c, seed, size, world) for c in INTERPOLATION_SCENES]
    # inverted and decoded under the inversion's guidance (invert_guidance 1), so the end frames reconstruct
    res = interpolation_grid(pipe, [(ends[0], ends[1])], n_steps=s.n_frames, x_T_mode="inverted", seed=seed,
                             sampling=sc, upsample=False)
    int_settings = {**res.settings, "demo": "interpolation", "scenes": list(INTERPOLATION_SCENES), **model}
    save_grid(res.image, folder / "interpolation.png", int_settings)
    _write_csv(folder / "interpolation.csv", res.frame)
    records.append({"title": "Image to image interpolation", "image": "interpolation.png",
                    "files": [str(e.relative_to(folder)) for e in ends] + ["interpolation.csv"],
                    "caption": f"'{INTERPOLATION_SCENES[0]}' -> '{INTERPOLATION_SCENES[1]}': z_i slerped; x_T of "
                               "both ends from DDIM inversion, slerped, so the end frames reconstruct the inputs.",
                    "settings": int_settings, "seconds": round(time.perf_counter() - t0, 1)})

    # text diff: slerp(z_i, normalize(z_t - z_t0), theta) with the inverted x_T held fixed (sec. 3.3, fig. 5)
    t0 = time.perf_counter()
    say("text diff")
    td_input = _save_input(folder, TEXT_DIFF_SCENE, seed, size, world)
    td = text_diff(pipe, td_input, TEXT_DIFF[0], TEXT_DIFF[1], theta_max=s.theta_max, n_steps=s.n_theta,
                   x_T_mode="inverted", seed=seed, sampling=sc, upsample=False)
    td_settings = {**td.settings, "demo": "text_diff", "input_scene": TEXT_DIFF_SCENE, **model}
    grid = make_grid([[Image.open(td_input).convert("RGB")] + list(td.images)], None,
                     ["input"] + [f"theta {t:.2f}" for t in td.frame["theta"]])
    save_grid(grid, folder / "text_diff.png", td_settings)
    _write_csv(folder / "text_diff.csv", td.frame)
    records.append({"title": "Text diff", "image": "text_diff.png",
                    "files": [str(td_input.relative_to(folder)), "text_diff.csv"],
                    "caption": f"'{TEXT_DIFF[0]}' -> '{TEXT_DIFF[1]}' applied to a render of a red circle, "
                               f"theta 0..{s.theta_max}; text_diff.csv holds the CLIP similarities per frame.",
                    "settings": td_settings, "seconds": round(time.perf_counter() - t0, 1)})

    # the cascade on one cell: decoder, then upsampler 1 (and 2 with --full-cascade) (sec. 2.1)
    if stages and first is not None:
        t0 = time.perf_counter()
        x, meta = first
        stage_files = [str(save_png(tensor_to_pil(x)[0], folder / "cascade" / "decoder.png",
                                    {**meta, "demo": "cascade", "stage": "decoder"}).relative_to(folder))]
        for k in range(stages):
            say(f"upsampler {k + 1} ({sc.upsampler_steps_for(k + 1)[k]} steps)")
            x = pipe.upsample(x, k, sampling=sc, seed=seed + k).cpu()
            stage_meta = {**meta, "demo": "cascade", "stage": f"upsampler{k + 1}", "upsampler_seed": seed + k,
                          "upsampler_steps": sc.upsampler_steps_for(stages)}
            path = save_png(tensor_to_pil(x)[0], folder / "cascade" / f"upsampler{k + 1}.png", stage_meta)
            stage_files.append(str(path.relative_to(folder)))
        records.append({"title": f"Cascade: {' -> '.join(f'{r}px' for r in pipe.resolutions[:stages + 1])}",
                        "image": stage_files[-1], "files": stage_files,
                        "caption": f"The first text-to-image cell ('{meta['prompt']}', seed {meta['seed']}) through "
                                   f"{stages} of the pipeline's {n_up} upsampler(s).",
                        "settings": stage_meta, "seconds": round(time.perf_counter() - t0, 1)})
    return records


def _generator_section(records: list[dict[str, Any]] | None, note: str, spec: str | None, prefix: str) -> str:
    if records is None:
        return f"<h2>unCLIP pictures</h2><p class='note'>{note}</p>"
    parts = [(f"<h2>unCLIP pictures</h2><p>Made with the pipeline <code>{html.escape(str(spec))}</code>; every "
              "PNG records the settings that made it in its text chunks "
              "(<code>unclip-explorer inspect PNG</code>).</p>")]
    for r in records:
        links = " ".join(f"<a href='{html.escape(prefix + f, quote=True)}'>{html.escape(f)}</a>"
                         for f in r["files"])
        parts.append(f"<figure><h3>{html.escape(r['title'])}</h3>"
                     f"<img src='{html.escape(prefix + r['image'], quote=True)}' alt='{html.escape(r['title'])}'>"
                     f"<figcaption>{html.escape(r['caption'])} ({r['seconds']} s)</figcaption>"
                     f"<p><small>files: {links}</small></p>{_settings_table(r['settings'])}</figure>")
    return "\n".join(parts)


def _export_image(export_dir: Path, row: pd.Series) -> Path | None:
    """The image file of a neighbour row of the demo's store, found whatever cwd the store was made from.

    The store records `source` as the path it was given (relative to the cwd of `embed`) and `id` as
    "image:<file>" with <file> relative to the export folder (or its images/ subfolder), so the id is tried first.
    """
    rel = str(row["id"]).split(":", 1)[1] if str(row["id"]).startswith("image:") else None
    src = Path(str(row["source"]))
    candidates = ([export_dir / rel, export_dir / "images" / rel] if rel else []) + [src]
    return next((p for p in candidates if p.is_file()), None)


def _neighbour_table(store_dir: Path, export_dir: Path, out: Path, query: str,
                     k: int) -> tuple[pd.DataFrame, str]:
    """A query's k neighbours as an HTML row of thumbnails whose src is relative to out/index.html."""
    df = api.neighbors(store_dir, text=query, k=k)
    cells = []
    for _, row in df.iterrows():
        img = _export_image(export_dir, row) if row["kind"] == "image" else None
        pic = ""
        if img is not None:
            # relative to index.html, so the folder can be moved or served from anywhere
            href = Path(os.path.relpath(img.resolve(), out.resolve())).as_posix()
            pic = f'<img src="{html.escape(urllib.parse.quote(href), quote=True)}" width="64">'
        cells.append(f"<td>{pic}<br><small>{row['score']:.3f}</small></td>")
    return df, f"<h3>{html.escape(query)}</h3><table><tr>{''.join(cells)}</tr></table>"


def run_demo(out: str | Path, n: int = 300, seed: int = 0, model: str = "shapes-clip", k: int = 6,
             progress: bool = True, pipeline: str | Path | None = AUTO,
             generator: GeneratorSettings | None = None) -> Path:
    """Write the demo folder `out` (index.html, the export, the store, neighbours.csv, pca.html, settings.json).

    model: the CLIP that embeds the export. pipeline: the unCLIP generator ("auto": the bundled shapes-unclip
    when bundled, else none; None or "none": skip); with one, `run_generator` writes out/unclip/.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; pass a folder")
    if generator is not None and not isinstance(generator, GeneratorSettings):
        raise TypeError(f"generator must be a GeneratorSettings or None, got {type(generator).__name__}")
    spec, note = _resolve_pipeline(pipeline)
    pipe = _load_pipeline(spec) if spec is not None else None  # fail on a bad spec before the slow part
    gen_settings = generator or GeneratorSettings()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    export_dir = out / "shapes"
    store_dir = out / "store"
    world = _clip_world(model)
    want = {"n": n, "seed": seed, "size": 64, "world": world}
    meta_path = export_dir / "meta.json"
    if meta_path.is_file():
        have = json.loads(meta_path.read_text(encoding="utf-8"))
        if {k: have.get(k) for k in want} != want:  # a rerun with another --n / --seed: rebuild what depends on it
            shutil.rmtree(export_dir)
            shutil.rmtree(store_dir, ignore_errors=True)
    if not (export_dir / "captions.jsonl").is_file():
        api.export_shapes(export_dir, n=n, seed=seed, size=64, progress=progress, world=world, overwrite=True)
    store = api.embed(export_dir, model, store_dir, kind="image", progress=progress)
    sections, tables = [], []
    for query in QUERIES:
        df, block = _neighbour_table(store_dir, export_dir, out, query, k)
        tables.append(df.assign(query=query))
        sections.append(block)
    atomic_write(out / "neighbours.csv", lambda p: pd.concat(tables).to_csv(p, index=False))

    from analyses.projection import fit_projection, projection_frame, scatter
    meta = store.metadata
    proj = fit_projection(store.vectors, method="pca", n_components=2, seed=seed)
    frame = projection_frame(proj, meta)
    colour = next((c for c in ("scene.objects.0.colour", "caption") if c in frame.columns), None)
    fig = scatter(frame, color=colour, hover=[c for c in ("source", "caption") if c in frame.columns] or None)
    fig.update_layout(title=f"PCA of {len(store)} image embeddings ({model}), coloured by the first object's colour")
    atomic_write(out / "pca.html", lambda p: fig.write_html(p, include_plotlyjs=True))
    clip_seconds = round(time.perf_counter() - t0, 1)

    records = None
    if pipe is not None:
        records = run_generator(pipe, out / "unclip", seed=seed, settings=gen_settings, progress=progress)
    generator_record: dict[str, Any] = {"pipeline": spec, "note": None if spec else note}
    if records is not None:
        generator_record.update({
            "pipeline_model": pipe.describe(), "settings": asdict(gen_settings),
            "seeds": {"text_to_image": [seed + j for j in range(gen_settings.n_seeds)], "variations": seed,
                      "interpolation": seed, "text_diff": seed},
            "pictures": {r["title"]: {"image": "unclip/" + r["image"], "files": ["unclip/" + f for f in r["files"]],
                                      "seconds": r["seconds"]} for r in records},
            "seconds": round(sum(r["seconds"] for r in records), 1)})
    settings = {"n": n, "seed": seed, "k": k, "queries": list(QUERIES), "clip_seconds": clip_seconds,
                "generator": generator_record, "seconds": round(time.perf_counter() - t0, 1)}
    files = ["index.html", "neighbours.csv", "pca.html", "shapes/", "store/"] + (["unclip/"] if records else [])
    record = run_record("demo", settings=settings, model={"model": model, "model_id": store.model_id}, seed=seed,
                        files=files)
    write_record(out, record)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>unclip-explorer demo</title>
<style>body{{font-family:sans-serif;max-width:960px;margin:2em auto}} td{{text-align:center;padding:4px}}
img{{image-rendering:pixelated;border:1px solid #ccc;max-width:100%}} figure{{margin:0 0 2em 0}}
table.settings{{border-collapse:collapse;font-size:12px}} table.settings th,table.settings td{{border:1px solid #ddd;
padding:2px 6px;text-align:left;vertical-align:top}} .note{{background:#fff6d6;padding:.6em}}</style></head><body>
<h1>unclip-explorer demo</h1>
<p>{n} ShapesWorld scenes (seed {seed}) embedded with <code>{html.escape(model)}</code>
(model id <code>{store.model_id}</code>); text queries answered by exact cosine nearest neighbours
among the image embeddings. Scores are cosine similarities.</p>
{''.join(sections)}
<h2>Projection</h2><p><a href="pca.html">Interactive PCA map of the embeddings</a>
(explained variance of the two axes: {', '.join(f'{v:.1%}' for v in proj.explained_variance_ratio_)}).</p>
{_generator_section(records, note, spec, "unclip/")}
<h2>Settings</h2><pre>{html.escape(json.dumps(record, indent=2, default=str))}</pre></body></html>"""
    atomic_write(out / "index.html", lambda p: Path(p).write_text(page, encoding="utf-8"))
    return out / "index.html"
