"""Binding suite runs on disk: resumable per-case results, summary tables, charts, gallery, index.html; compare.

A run folder (docs/binding.md):
  settings.json          model, seeds, suite hash and every setting (a resumed run must match it)
  parts/clip-NNNNN.jsonl per-case CLIP-level results, one file per finished batch, written atomically
  parts/gen-NNNNN.jsonl  per-image generation results, one file per finished case
  probes.csv             representation-level linear probes
  cases.csv/.parquet, generation.csv/.parquet, summary.csv, generation_summary.csv
  charts/accuracy.html, charts/confusion.html, failures.png, images/, index.html
A killed run loses at most the batch (or case) in flight; rerun the same command to continue.
"""
from __future__ import annotations

import hashlib
import html
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from analyses.binding import (GENERATION_PATHS, ShapesJudge, accuracy_table, case_image, case_seed, clip_summary,
                              clip_scores, generation_scores, generation_summary, linear_probes, mcnemar,
                              check_suite_world, model_world, paired_bootstrap, probe_embeddings, probe_scenes)
from analyses.binding_suite import (CaptionPairCase, Case, GenerationCase, WinogroundCase, load_suite,
                                    suite_lines)
from explorer.store.format import _parquet_safe, _tool_version
from explorer.records import save_png, versions
from unclip_core.atomic import atomic_write
from unclip_core.checks import check_positive_int

SETTINGS_FILE = "settings.json"
# settings that change results: a resumed run must agree on them
_RESUME_KEYS = ("suite_sha256", "model", "seed", "image_size", "generate", "n_images", "paths", "probe_n",
                "sampling", "upsample", "judge")


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _write_json(path: Path, obj: Any) -> None:
    _write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def _write_table(path_stem: Path, df: pd.DataFrame, parquet: bool = True) -> None:
    atomic_write(path_stem.with_suffix(".csv"), lambda tmp: df.to_csv(tmp, index=False))
    if parquet:
        safe = _parquet_safe(df)
        atomic_write(path_stem.with_suffix(".parquet"), lambda tmp: safe.to_parquet(tmp, index=False))


def write_suite(cases: Sequence[Case], path: str | Path) -> Path:
    """Write cases as a JSONL suite, atomically (temporary file, then rename)."""
    cases = list(cases)
    if not cases:
        raise ValueError("cases is empty; a suite needs at least one case")
    _write_text(Path(path), "\n".join(suite_lines(cases)) + "\n")
    return Path(path)


def _read_parts(folder: Path, prefix: str) -> pd.DataFrame:
    files = sorted((folder / "parts").glob(f"{prefix}-*.jsonl"))
    rows = [json.loads(line) for f in files for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    return pd.DataFrame(rows)


def _write_part(folder: Path, prefix: str, df: pd.DataFrame) -> None:
    parts = folder / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    n = len(list(parts.glob(f"{prefix}-*.jsonl")))
    records = json.loads(df.to_json(orient="records"))  # NaN -> null
    _write_text(parts / f"{prefix}-{n:05d}.jsonl", "".join(json.dumps(r) + "\n" for r in records))


def _is_pipeline(spec: Any) -> bool:
    if not isinstance(spec, (str, Path)):
        return hasattr(spec, "text_to_image") and hasattr(spec, "decode")
    try:
        from unclip_core.checkpoint import resolve
        return (resolve(spec) / "pipeline.json").is_file()
    except (ValueError, FileNotFoundError, TypeError):
        return False


def _load_models(model: Any, generate: bool) -> tuple[Any, Any]:
    """(encoder, pipeline or None) for a CLIP spec / encoder, or a pipeline spec / UnCLIP."""
    from explorer.api import load_encoder
    if _is_pipeline(model):
        pipe = model
        if isinstance(model, (str, Path)):
            from explorer.api import load_pipeline
            pipe = load_pipeline(model)
        return pipe.clip, pipe
    if generate:
        raise ValueError(f"--generate needs a pipeline (a folder with pipeline.json or a bundled pipeline such as "
                         f"'shapes-unclip'), got model={model!r}, which is a CLIP model; drop --generate to run the "
                         "CLIP-level and probe-level suite on it")
    return load_encoder(model), None


def _model_name(model: Any) -> str:
    if isinstance(model, (str, Path)):
        return str(model)
    return str(getattr(model, "spec", None) or getattr(model, "name", None) or type(model).__name__)


def _has_results(folder: Path) -> bool:
    """Whether a run folder holds any finished work (parts, probes, images), not only its settings."""
    return (any((folder / "parts").glob("*.jsonl")) or (folder / "probes.csv").is_file()
            or any((folder / "images").glob("*/*.png")))


def _check_images_exist(cases: Sequence[Case]) -> None:
    """Every image file a suite names must exist before a run writes anything (a rerun then starts clean)."""
    missing = []
    for c in cases:
        specs = c.images if isinstance(c, WinogroundCase) else (getattr(c, "image", None),)
        missing += [(c.id, im) for im in specs if isinstance(im, str) and not Path(im).is_file()]
    if missing:
        shown = "; ".join(f"case {cid!r}: {im}" for cid, im in missing[:3])
        raise FileNotFoundError(f"{len(missing)} image file(s) named by the suite do not exist ({shown}"
                                f"{'; ...' if len(missing) > 3 else ''}); fix the paths (relative paths are read "
                                "from the suite's folder) and rerun: nothing was written")


def _check_resume(folder: Path, settings: dict[str, Any]) -> None:
    path = folder / SETTINGS_FILE
    if not path.is_file() or not _has_results(folder):
        return  # a run that failed before any work (bad paths, a model that did not load) starts over
    old = json.loads(path.read_text(encoding="utf-8"))
    diffs = [k for k in _RESUME_KEYS if json.dumps(old.get(k), sort_keys=True, default=str)
             != json.dumps(settings.get(k), sort_keys=True, default=str)]
    if diffs:
        shown = "; ".join(f"{k}: run has {old.get(k)!r}, now {settings.get(k)!r}" for k in diffs)
        raise ValueError(f"{folder} holds a run with other settings ({shown}); rerun with the same settings to "
                         "resume it, or pass a new --out folder")


def run_suite(suite: str | Path | Sequence[Case], model: Any, out: str | Path, generate: bool = False,
              n_images: int = 2, seed: int = 0, judge: Callable | None = None, probes: bool = True,
              probe_n: int = 600, image_size: int = 64, batch_size: int = 32,
              paths: Sequence[str] = GENERATION_PATHS, sampling: Any = None, upsample: bool | int | None = False,
              progress: bool = True) -> Path:
    """Run a binding suite into folder `out` (resumable) and write its report; returns `out`.

    model: a CLIP spec or encoder (CLIP-level and probe-level), or a pipeline spec / UnCLIP (also needed for
    generate=True, which judges n_images per generation case with `judge`, ShapesJudge by default).
    sampling: a SamplingConfig or a dict of its fields over the pipeline's own settings (None: the pipeline's);
    upsample: the cascade generation runs (False: the decoder's images, which the ShapesWorld judge reads).
    """
    from unclip_core.sampling import SamplingConfig
    from tqdm.auto import tqdm

    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"--out {folder} exists and is not a folder; pass a folder path")
    if isinstance(suite, (str, Path)):
        suite_path: str | None = str(Path(suite).resolve())
        cases = load_suite(suite)
    else:
        suite_path, cases = None, list(suite)
    if not cases:
        raise ValueError("the suite has no cases")
    _check_images_exist(cases)
    n_images = check_positive_int("n_images", n_images)
    batch_size = check_positive_int("batch_size", batch_size)
    probe_n = check_positive_int("probe_n", probe_n, minimum=0)
    judge_obj = judge if judge is not None else ShapesJudge()
    if not callable(judge_obj):
        raise TypeError(f"judge must be callable (image, case) -> {{check: bool}}, got {type(judge).__name__}")
    suite_sha = hashlib.sha256("\n".join(suite_lines(cases)).encode()).hexdigest()
    settings: dict[str, Any] = {
        "suite": suite_path, "suite_sha256": suite_sha, "n_cases": len(cases), "model": _model_name(model),
        "seed": seed, "image_size": image_size, "generate": bool(generate), "n_images": n_images,
        "paths": list(paths), "probes": bool(probes), "probe_n": probe_n if probes else 0,
        "sampling": sampling.to_dict() if isinstance(sampling, SamplingConfig) else dict(sampling or {}),
        "upsample": upsample,
        "judge": type(judge_obj).__name__ if generate else None, "batch_size": batch_size,
        "tool_version": _tool_version(), "versions": versions(), "command": "binding run",
    }
    _check_resume(folder, settings)
    encoder, pipe = _load_models(model, generate)
    check_suite_world(cases, encoder)
    world = model_world(encoder)
    settings["world"] = world
    if judge is None:
        judge_obj = ShapesJudge(world=world)  # reads images in the world the model draws
    settings["model_id"] = str(getattr(encoder, "model_id", getattr(encoder, "spec", "")))
    if pipe is not None and hasattr(pipe, "describe"):
        settings["pipeline"] = pipe.describe()
    old_path = folder / SETTINGS_FILE
    settings["started"] = (json.loads(old_path.read_text())["started"] if old_path.is_file() and _has_results(folder)
                           else time.strftime("%Y-%m-%dT%H:%M:%S"))
    settings["finished"] = None
    _write_json(old_path, settings)

    # CLIP level: batches of unfinished cases, each batch one atomic part file
    clip_cases = [c for c in cases if isinstance(c, (CaptionPairCase, WinogroundCase))]
    done = set(_read_parts(folder, "clip").get("id", pd.Series(dtype=str)).astype(str))
    todo = [c for c in clip_cases if c.id not in done]
    with tqdm(total=len(clip_cases), initial=len(clip_cases) - len(todo), desc="CLIP-level", unit="case",
              disable=not progress) as bar:
        for s in range(0, len(todo), batch_size):
            batch = todo[s:s + batch_size]
            _write_part(folder, "clip", clip_scores(batch, encoder, image_size))
            bar.update(len(batch))

    # representation level
    if probes and probe_n and not (folder / "probes.csv").is_file():
        scenes = probe_scenes(probe_n, seed, world=world)
        df = linear_probes(scenes, probe_embeddings(scenes, encoder, image_size, batch_size), seed=seed)
        _write_table(folder / "probes", df, parquet=False)

    # generation level: one part per finished case, images saved before it
    if generate:
        gen_cases = [c for c in cases if isinstance(c, GenerationCase)]
        if hasattr(judge_obj, "check_case"):
            for c in gen_cases:
                judge_obj.check_case(c)
        from unclip_core.sampling import check_sampling
        gen_sampling = check_sampling(sampling, getattr(pipe, "sampling", None) or SamplingConfig())
        done = set(_read_parts(folder, "gen").get("id", pd.Series(dtype=str)).astype(str))
        todo_g = [c for c in gen_cases if c.id not in done]

        def save(case: GenerationCase, path: str, images: list) -> None:
            meta = {"case": case.id, "category": case.category, "prompt": case.prompt, "path": path,
                    "seed": case_seed(seed, case.id), "n_images": len(images), "model": settings["model"],
                    "model_id": settings["model_id"], "suite_sha256": suite_sha, "world": world,
                    **({"pipeline": settings["pipeline"]} if "pipeline" in settings else {}),
                    "upsample": upsample, "sampling": gen_sampling.to_dict()}
            for k, im in enumerate(images):
                save_png(im, folder / "images" / case.id / f"{path}-{k}.png", {**meta, "index": k})

        with tqdm(total=len(gen_cases), initial=len(gen_cases) - len(todo_g), desc="generation", unit="case",
                  disable=not progress) as bar:
            for c in todo_g:
                df = generation_scores([c], pipe, judge_obj, n_images, seed, paths, image_size,
                                       sampling=gen_sampling, upsample=upsample, on_images=save)
                _write_part(folder, "gen", df)
                bar.update(1)

    write_report(folder, cases)
    settings["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    _write_json(old_path, settings)
    return folder


# ----------------------------------------------------------------------------------------------- report

def accuracy_figure(summary: pd.DataFrame, gen_summary: pd.DataFrame):
    import plotly.graph_objects as go
    fig = go.Figure()
    blocks = []
    if not summary.empty:
        for (kind, metric), t in summary.groupby(["kind", "metric"], sort=False):
            blocks.append((f"{kind} {metric}", t))
    if not gen_summary.empty:
        for path, t in gen_summary.groupby("path", sort=False):
            blocks.append((f"generation ({path})", t))
    for name, t in blocks:
        t = t[~t["category"].isin(["all"])]
        fig.add_bar(name=name, x=t["category"], y=t["accuracy"],
                    error_y=dict(type="data", symmetric=False, array=t["hi"] - t["accuracy"],
                                 arrayminus=t["accuracy"] - t["lo"]))
    fig.update_layout(title="Binding accuracy per category (95% intervals; macro = mean of categories)",
                      barmode="group", yaxis=dict(title="accuracy", range=[0, 1]), xaxis_title="category")
    return fig


def swap_confusion(scores: pd.DataFrame, cases: Sequence[Case]) -> pd.DataFrame:
    """Error rate per swapped pair of values (e.g. red<->blue) and attribute, from the cases' meta 'swap'."""
    meta = {c.id: c.meta for c in cases}
    rows = []
    for r in scores.itertuples():
        m = meta.get(r.id, {})
        swap = m.get("swap")
        if not isinstance(swap, list) or len(swap) != 2 or "attribute" not in m:
            continue
        rows.append({"attribute": m["attribute"], "a": str(swap[0]), "b": str(swap[1]), "miss": not bool(r.hit)})
    if not rows:
        return pd.DataFrame(columns=["attribute", "a", "b", "n", "error_rate"])
    df = pd.DataFrame(rows)
    return (df.groupby(["attribute", "a", "b"])["miss"].agg(["size", "mean"]).reset_index()
            .rename(columns={"size": "n", "mean": "error_rate"}))


def confusion_figure(conf: pd.DataFrame):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots
    attrs = sorted(conf["attribute"].unique()) if not conf.empty else []
    fig = make_subplots(rows=1, cols=max(1, len(attrs)), subplot_titles=attrs or ["no swap cases"])
    for j, attr in enumerate(attrs, start=1):
        t = conf[conf["attribute"] == attr]
        values = sorted(set(t["a"]) | set(t["b"]))
        z = np.full((len(values), len(values)), np.nan)
        text = [["" for _ in values] for _ in values]
        for r in t.itertuples():
            i, k = values.index(r.a), values.index(r.b)
            z[i, k] = z[k, i] = r.error_rate
            text[i][k] = text[k][i] = f"{r.error_rate:.2f} (n={r.n})"
        fig.add_trace(go.Heatmap(z=z, x=values, y=values, text=text, hoverinfo="text", zmin=0, zmax=1,
                                 colorscale="Reds", showscale=j == len(attrs)), row=1, col=j)
    fig.update_layout(title="Swapped-attribute confusion: CLIP error rate per swapped pair of values")
    return fig


def _write_figure(path: Path, fig) -> None:
    # plotly.js is written once beside the charts, so the report opens offline
    atomic_write(path, lambda tmp: fig.write_html(str(tmp), include_plotlyjs="directory", full_html=True))


def _wrap(text: str, width: int) -> list[str]:
    words, lines, cur = text.split(), [], ""
    for w in words:
        if len(cur) + len(w) + 1 > width and cur:
            lines.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}".strip()
    return lines + ([cur] if cur else [])


def failure_gallery(scores: pd.DataFrame, cases: Sequence[Case], max_items: int = 24, tile: int = 128,
                    image_size: int = 64):
    """A PIL image of failed CLIP-level cases: the image, its caption (+) and the foil CLIP preferred (-)."""
    from PIL import Image, ImageDraw
    by_id = {c.id: c for c in cases}
    failed = scores[~scores["hit"].astype(bool)]
    failed = failed.sort_values("category", kind="stable").head(max_items)
    n = len(failed)
    cols = min(6, max(1, n))
    rows = max(1, math.ceil(n / cols))
    text_h = 64
    sheet = Image.new("RGB", (cols * tile, rows * (tile + text_h)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    if n == 0:
        draw.text((4, 4), "no failures", fill=(0, 0, 0))
        return sheet
    for j, r in enumerate(failed.itertuples()):
        c = by_id[r.id]
        x, y = (j % cols) * tile, (j // cols) * (tile + text_h)
        if isinstance(c, CaptionPairCase):
            im, good, bad = case_image(c.image, image_size, c.meta.get("crop")), c.caption, str(r.best_foil)
        else:
            im, good, bad = case_image(c.images[0], image_size), c.captions[0], c.captions[1]
        sheet.paste(im.convert("RGB").resize((tile, tile)), (x, y))
        lines = [f"[{r.category}]"] + ["+ " + s for s in _wrap(good, 24)[:2]] + ["- " + s for s in _wrap(bad, 24)[:2]]
        for k, line in enumerate(lines[:5]):
            draw.text((x + 2, y + tile + 1 + 12 * k), line, fill=(0, 0, 0))
    return sheet


def _html_table(df: pd.DataFrame) -> str:
    return df.to_html(index=False, float_format=lambda v: f"{v:.3f}", na_rep="", border=0)


def write_report(folder: str | Path, cases: Sequence[Case]) -> dict[str, pd.DataFrame]:
    """Merge the part files of a run into tables, charts, the failure gallery and index.html."""
    folder = Path(folder)
    clip = _read_parts(folder, "clip")
    if not clip.empty:
        order = {c.id: k for k, c in enumerate(cases)}
        clip = clip.drop_duplicates("id", keep="last")
        clip = clip.iloc[np.argsort([order.get(i, len(order)) for i in clip["id"]], kind="stable")]
        clip = clip.reset_index(drop=True)
    gen = _read_parts(folder, "gen")
    summary = clip_summary(clip) if not clip.empty else pd.DataFrame()
    gen_summary = generation_summary(gen) if not gen.empty else pd.DataFrame()
    by_split = pd.DataFrame()
    if not clip.empty:
        cp = clip[clip["kind"] == "caption_pair"]
        if not cp.empty and cp["split"].astype(str).str.len().gt(0).any():
            by_split = accuracy_table(cp["hit"].astype(bool).to_numpy(), cp["split"].astype(str).to_numpy())
            by_split = by_split.rename(columns={"group": "split"})
    if not clip.empty:
        _write_table(folder / "cases", clip)
        _write_table(folder / "summary", summary, parquet=False)
    if not gen.empty:
        _write_table(folder / "generation", gen)
        _write_table(folder / "generation_summary", gen_summary, parquet=False)
    probes = pd.read_csv(folder / "probes.csv") if (folder / "probes.csv").is_file() else pd.DataFrame()
    charts = folder / "charts"
    _write_figure(charts / "accuracy.html", accuracy_figure(summary, gen_summary))
    cp = clip[clip["kind"] == "caption_pair"] if not clip.empty else clip
    conf = swap_confusion(cp, cases) if not cp.empty else swap_confusion(pd.DataFrame(columns=["id", "hit"]), cases)
    _write_figure(charts / "confusion.html", confusion_figure(conf))
    if not clip.empty:
        sheet = failure_gallery(clip, cases)
        atomic_write(folder / "failures.png", lambda tmp: sheet.save(tmp, format="PNG"))
    settings = json.loads((folder / SETTINGS_FILE).read_text()) if (folder / SETTINGS_FILE).is_file() else {}
    probe_wide = pd.DataFrame()
    if not probes.empty:
        probe_wide = probes.pivot_table(index="question", columns="features", values="accuracy").reset_index()
    parts = [f"<h1>Binding suite: {html.escape(str(settings.get('model', '')))}</h1>",
             "<p>CLIP-level hit: the true caption scores strictly above every foil. Winoground: text / image / group "
             "scores (chance 25 / 25 / 16.7%). Intervals: Wilson 95%; macro: mean of categories (ARO).</p>"]
    if not summary.empty:
        parts += ["<h2>CLIP level</h2>", _html_table(summary)]
    if not by_split.empty:
        parts += ["<h3>Train vs held-out compositions (caption pairs)</h3>", _html_table(by_split)]
    if not probe_wide.empty:
        parts += ["<h2>Representation level (linear probes, 5-fold CV accuracy)</h2>",
                  "<p>bag: a probe on the bag of attributes, which ignores binding; z above bag means the "
                  "embedding keeps which attribute belongs to which object.</p>", _html_table(probe_wide)]
    if not gen_summary.empty:
        parts += ["<h2>Generation level</h2><p>prior: text -> prior -> decoder; true_z_i: decoder from the true "
                  "image's z_i.</p>", _html_table(gen_summary)]
    parts += ['<h2>Charts</h2><ul><li><a href="charts/accuracy.html">accuracy per category</a></li>'
              '<li><a href="charts/confusion.html">swapped-attribute confusion</a></li></ul>']
    if (folder / "failures.png").is_file():
        parts += ['<h2>Failures</h2><img src="failures.png" alt="failure gallery">']
    parts += ["<h2>Files</h2><ul>" + "".join(f'<li><a href="{f}">{f}</a></li>' for f in
                                             ("cases.csv", "summary.csv", "probes.csv", "generation.csv",
                                              "generation_summary.csv", SETTINGS_FILE) if (folder / f).is_file())
              + "</ul>", "<h2>Settings</h2><pre>" + html.escape(json.dumps(settings, indent=2, default=str))
              + "</pre>"]
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>binding suite</title><style>"
            "body{font-family:sans-serif;margin:2em} table{border-collapse:collapse} td,th{padding:2px 8px;"
            "border-bottom:1px solid #ddd;text-align:right}</style></head><body>" + "\n".join(parts)
            + "</body></html>")
    _write_text(folder / "index.html", page)
    return {"cases": clip, "summary": summary, "probes": probes, "generation": gen,
            "generation_summary": gen_summary, "confusion": conf}


# ----------------------------------------------------------------------------------------------- compare

def _read_run_table(folder: Path, stem: str) -> pd.DataFrame:
    for suffix in (".parquet", ".csv"):
        p = folder / f"{stem}{suffix}"
        if p.is_file():
            return pd.read_parquet(p) if suffix == ".parquet" else pd.read_csv(p)
    return pd.DataFrame()


def compare_runs(run_a: str | Path, run_b: str | Path, level: float = 0.95, n_boot: int = 2000,
                 seed: int = 0, *, shared_cases: bool = False) -> pd.DataFrame:
    """Per-category differences between two runs, paired on case id: McNemar (exact) on CLIP-level hits and a
    paired bootstrap interval of acc_b - acc_a; generation rows pair per-case mean hits (bootstrap only).

    Runs over different suites (another suite_sha256) are refused unless shared_cases=True, which compares the
    cases whose ids both runs hold (the table's n says how many)."""
    a_dir, b_dir = Path(run_a), Path(run_b)
    for d in (a_dir, b_dir):
        if not (d / SETTINGS_FILE).is_file():
            raise FileNotFoundError(f"{d} is not a binding run (no {SETTINGS_FILE}); pass folders written by "
                                    "`unclip-explorer binding run`")
    sa, sb = (json.loads((d / SETTINGS_FILE).read_text(encoding="utf-8")) for d in (a_dir, b_dir))
    if sa.get("suite_sha256") != sb.get("suite_sha256") and not shared_cases:
        raise ValueError(f"{a_dir} and {b_dir} ran different suites ({sa.get('n_cases')} cases from "
                         f"{sa.get('suite')}, sha256 {str(sa.get('suite_sha256'))[:12]}; {sb.get('n_cases')} cases from "
                         f"{sb.get('suite')}, sha256 {str(sb.get('suite_sha256'))[:12]}); rerun one on the other's "
                         "suite, or pass shared_cases=True (--shared-cases) to compare the cases both hold")
    rows = []
    a, b = _read_run_table(a_dir, "cases"), _read_run_table(b_dir, "cases")
    if not a.empty and not b.empty:
        m = a[["id", "kind", "category", "hit"]].merge(b[["id", "hit"]], on="id", suffixes=("_a", "_b"))
        if m.empty:
            raise ValueError(f"{a_dir} and {b_dir} share no case ids; compare runs of the same suite")
        for (kind, cat), t in [*m.groupby(["kind", "category"], sort=True), *(((k, "all"), t) for k, t in
                                                                               m.groupby("kind", sort=True))]:
            ha, hb = t["hit_a"].astype(bool).to_numpy(), t["hit_b"].astype(bool).to_numpy()
            mc = mcnemar(ha, hb)
            pb = paired_bootstrap(ha, hb, level, n_boot, seed)
            rows.append({"level": "clip", "kind": kind, "category": cat, "n": mc["n"], "acc_a": ha.mean(),
                         "acc_b": hb.mean(), "diff": pb["diff"], "lo": pb["lo"], "hi": pb["hi"], "a_only": mc["b10"],
                         "b_only": mc["b01"], "p_mcnemar": mc["p"], "p_bootstrap": pb["p"]})
    ga, gb = _read_run_table(a_dir, "generation"), _read_run_table(b_dir, "generation")
    if not ga.empty and not gb.empty:
        pa = ga.groupby(["id", "category", "path"])["hit"].mean().reset_index()
        pbb = gb.groupby(["id", "path"])["hit"].mean().reset_index()
        m = pa.merge(pbb, on=["id", "path"], suffixes=("_a", "_b"))
        for (path, cat), t in [*m.groupby(["path", "category"], sort=True), *(((p, "all"), t) for p, t in
                                                                              m.groupby("path", sort=True))]:
            pb = paired_bootstrap(t["hit_a"].to_numpy(), t["hit_b"].to_numpy(), level, n_boot, seed)
            rows.append({"level": f"generation ({path})", "kind": "generation", "category": cat, "n": len(t),
                         "acc_a": t["hit_a"].mean(), "acc_b": t["hit_b"].mean(), "diff": pb["diff"], "lo": pb["lo"],
                         "hi": pb["hi"], "a_only": np.nan, "b_only": np.nan, "p_mcnemar": np.nan,
                         "p_bootstrap": pb["p"]})
    if not rows:
        raise ValueError(f"{a_dir} and {b_dir} have no results in common (cases.csv / generation.csv); finish both "
                         "runs first")
    return pd.DataFrame(rows)


def load_run(folder: str | Path) -> dict[str, Any]:
    """The tables of a finished `binding run` folder: settings, summary, cases, probes, generation_summary."""
    folder = Path(str(folder).strip()).expanduser()
    if not str(folder).strip() or not folder.is_dir():
        raise FileNotFoundError(f"no binding run folder at {str(folder)!r}; type the --out folder of "
                                "`unclip-explorer binding run`")
    if not (folder / "settings.json").is_file():
        raise FileNotFoundError(f"{folder} is not a binding run (no settings.json); type the --out folder of "
                                "`unclip-explorer binding run`")
    settings = json.loads((folder / "settings.json").read_text(encoding="utf-8"))
    if not settings.get("finished"):
        raise ValueError(f"the run in {folder} has not finished (settings.json has no 'finished' time); rerun "
                         "the same `unclip-explorer binding run` command to complete it")

    def table(stem: str) -> pd.DataFrame:
        for suffix in (".parquet", ".csv"):
            p = folder / f"{stem}{suffix}"
            if p.is_file():
                return pd.read_parquet(p) if suffix == ".parquet" else pd.read_csv(p)
        return pd.DataFrame()

    return {"folder": folder, "settings": settings, "summary": table("summary"), "cases": table("cases"),
            "probes": table("probes"), "generation_summary": table("generation_summary"),
            "failures": folder / "failures.png" if (folder / "failures.png").is_file() else None}


def run_cases(settings: Mapping[str, Any]) -> list[Any] | None:
    """The suite cases of a run (for the swap confusion), when its suite file is still on disk."""
    suite = settings.get("suite")
    if not suite or not Path(suite).is_file():
        return None
    from analyses.binding_suite import load_suite
    return load_suite(suite)


__all__ = ["load_run", "run_cases", "accuracy_figure", "confusion_figure", "run_suite", "write_report", "write_suite", "compare_runs", "swap_confusion", "failure_gallery"]


def probe_store(store: Any, *, questions: Sequence[str] | None = None, n_splits: int = 5, seed: int = 0,
                level: float = 0.95) -> pd.DataFrame:
    """Linear binding probes (analyses.binding.linear_probes) on the embeddings a store already holds: a store of
    a ShapesWorld export (ours or its clip-retrieval export), whose rows carry their scene in the "scene" metadata
    column. z_i comes from its image rows; z_t from its text rows of the same files, where it has them."""
    from analyses.binding import linear_probes
    from explorer.store import open_store
    from unclip_core.data.shapes_scene import Scene
    store = open_store(store, "store")
    meta = store.metadata
    if "scene" not in meta.columns:
        raise ValueError(f"the store {store.path} has no 'scene' metadata column: binding probes need the ShapesWorld "
                         "scene of each row (embed a `unclip-explorer shapes export` folder)")
    kinds = meta["kind"].astype(str).to_numpy() if "kind" in meta.columns else np.full(len(meta), "image")
    img = np.flatnonzero((kinds == "image") & meta["scene"].notna().to_numpy())
    if len(img) < 2 * n_splits:
        raise ValueError(f"the store {store.path} has {len(img)} image rows with a scene; probes need at least "
                         f"{2 * n_splits} (n_splits={n_splits})")
    key = meta["file"].astype(str).to_numpy() if "file" in meta.columns else meta["id"].astype(str).to_numpy()
    scenes = [Scene.from_dict(json.loads(v) if isinstance(v, str) else v) for v in meta["scene"].iloc[img]]
    features = {"z_i": np.asarray(store.vectors[img], np.float32)}
    text_row = {k: i for i, k in enumerate(key) if kinds[i] == "text"}
    paired = [text_row.get(key[i]) for i in img]
    if all(t is not None for t in paired):
        features["z_t"] = np.asarray(store.vectors[np.asarray(paired)], np.float32)
    return linear_probes(scenes, features, n_splits=n_splits, seed=seed, level=level, questions=questions)

