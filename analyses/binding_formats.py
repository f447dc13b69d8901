"""Readers of public binding benchmarks from local files into suite cases (nothing is downloaded).

ARO VG-Relation / VG-Attribution (Yuksekgonul et al. 2023), Winoground (Thrush et al. 2022), SugarCrepe
(Hsieh et al. 2023) and GenEval (Ghosh et al. 2023) metadata. Errors name the file, entry and field.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from analyses.binding_suite import (CaptionPairCase, Expected, ExpectedObject, GenerationCase, SuiteError,
                                    WinogroundCase)
from unclip_core.checks import check_choice

ARO_KINDS: tuple[str, ...] = ("auto", "vg_relation", "vg_attribution")
SUGARCREPE_FILES: tuple[str, ...] = ("add_obj", "add_att", "replace_obj", "replace_att", "replace_rel", "swap_obj",
                                     "swap_att")
GENEVAL_TAGS: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
_GENEVAL_RELATIONS = ("left of", "right of", "above", "below")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SuiteError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None


def _jsonl_records(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed JSON) for each non-blank line of a JSONL file; bad JSON names the file and line."""
    for lineno, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SuiteError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
        yield lineno, record


def _field(path: Path, where: str, d: Any, key: str, kind: type | tuple = str) -> Any:
    if not isinstance(d, dict):
        raise SuiteError(f"{path}: {where}: expected a JSON object, got {type(d).__name__}")
    if key not in d:
        raise SuiteError(f"{path}: {where}: field {key!r} is missing; present: {', '.join(sorted(d))}")
    v = d[key]
    if not isinstance(v, kind) or (isinstance(v, str) and not v.strip()):
        want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise SuiteError(f"{path}: {where}: field {key!r}: expected a non-empty {want}, got {type(v).__name__} {v!r}")
    return v


def load_aro(path: str | Path, image_root: str | Path, kind: str = "auto") -> list[CaptionPairCase]:
    """ARO's visual_genome_relation.json / visual_genome_attribution.json -> caption_pair cases.

    Each entry: image_path (under image_root), bbox_x/y/w/h (the crop ARO scores), true_caption, false_caption,
    and relation_name (VG-Relation) or attributes [a, b] (VG-Attribution); the group used for ARO's macro
    accuracy is the relation, or the attribute pair "a_b".
    """
    path, root = Path(path), Path(image_root)
    check_choice("kind", kind, ARO_KINDS)
    data = _read_json(path)
    if not isinstance(data, list) or not data:
        raise SuiteError(f"{path}: expected a non-empty JSON list of ARO entries, got {type(data).__name__}")
    if kind == "auto":
        first = data[0] if isinstance(data[0], dict) else {}
        if "relation_name" in first:
            kind = "vg_relation"
        elif "attributes" in first:
            kind = "vg_attribution"
        else:
            raise SuiteError(f"{path}: entry 0 has neither 'relation_name' (VG-Relation) nor 'attributes' "
                             "(VG-Attribution); pass kind='vg_relation' or 'vg_attribution'")
    cases = []
    for k, d in enumerate(data):
        where = f"entry {k}"
        image = str(root / _field(path, where, d, "image_path"))
        if kind == "vg_relation":
            group = _field(path, where, d, "relation_name")
        else:
            attrs = _field(path, where, d, "attributes", list)
            if len(attrs) != 2 or not all(isinstance(a, str) for a in attrs):
                raise SuiteError(f"{path}: {where}: field 'attributes': expected 2 strings, got {attrs!r}")
            group = f"{attrs[0]}_{attrs[1]}"
        meta: dict[str, Any] = {"group": group, "source": "aro"}
        if all(b in d for b in ("bbox_x", "bbox_y", "bbox_w", "bbox_h")):
            x, y, w, h = (float(_field(path, where, d, b, (int, float))) for b in ("bbox_x", "bbox_y", "bbox_w",
                                                                                   "bbox_h"))
            meta["crop"] = [x, y, x + w, y + h]
        cases.append(CaptionPairCase(f"aro-{kind}-{k:06d}", kind, image, _field(path, where, d, "true_caption"),
                                     (_field(path, where, d, "false_caption"),), (), meta))
    return cases


def _find_image(folder: Path, stem: str, where: str) -> str:
    for suffix in ("", *_IMAGE_SUFFIXES):
        p = folder / f"{stem}{suffix}"
        if p.is_file():
            return str(p)
    raise FileNotFoundError(f"{where}: image {stem!r} not found in {folder} (tried {', '.join(_IMAGE_SUFFIXES)})")


def load_winoground(folder: str | Path) -> list[WinogroundCase]:
    """A local Winoground folder (examples.jsonl + images/) -> winoground cases, category = collapsed_tag."""
    folder = Path(folder)
    path = folder / "examples.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no examples.jsonl; pass the Winoground folder holding examples.jsonl "
                                "and images/")
    cases = []
    for lineno, d in _jsonl_records(path):
        where = f"line {lineno}"
        ex_id = _field(path, where, d, "id", (int, str))
        captions = (_field(path, where, d, "caption_0"), _field(path, where, d, "caption_1"))
        images = tuple(_find_image(folder / "images", _field(path, where, d, f"image_{j}"), f"{path}:{lineno}")
                       for j in (0, 1))
        tag = str(d.get("collapsed_tag", "Object")).strip().lower()
        if tag not in ("object", "relation", "both"):
            raise SuiteError(f"{path}:{lineno}: field 'collapsed_tag': {d.get('collapsed_tag')!r} is not known; "
                             "accepted: Object, Relation, Both")
        tags = tuple(str(d[t]) for t in ("tag", "secondary_tag") if d.get(t))
        cases.append(WinogroundCase(f"winoground-{ex_id}", tag, captions, images, tags,  # type: ignore[arg-type]
                                    {"source": "winoground", "num_main_preds": d.get("num_main_preds")}))
    return cases


def load_sugarcrepe(path: str | Path, image_root: str | Path) -> list[CaptionPairCase]:
    """SugarCrepe JSON ({key: {filename, caption, negative_caption}}; category = file name, e.g. swap_att)
    or a folder holding several of its files -> caption_pair cases; images are COCO val2017 under image_root."""
    path, root = Path(path), Path(image_root)
    if path.is_dir():
        files = [path / f"{name}.json" for name in SUGARCREPE_FILES if (path / f"{name}.json").is_file()]
        if not files:
            raise FileNotFoundError(f"{path} holds none of SugarCrepe's files ({', '.join(SUGARCREPE_FILES)}.json)")
        return [c for f in files for c in load_sugarcrepe(f, root)]
    category = path.stem
    if category not in SUGARCREPE_FILES:
        raise ValueError(f"{path.name} is not a SugarCrepe file name; accepted: "
                         f"{', '.join(n + '.json' for n in SUGARCREPE_FILES)} (the name is the category)")
    data = _read_json(path)
    if not isinstance(data, dict) or not data:
        raise SuiteError(f"{path}: expected a non-empty JSON object {{key: entry}}, got {type(data).__name__}")
    cases = []
    for key, d in data.items():
        where = f"entry {key!r}"
        cases.append(CaptionPairCase(f"sugarcrepe-{category}-{key}", category,
                                     str(root / _field(path, where, d, "filename")), _field(path, where, d, "caption"),
                                     (_field(path, where, d, "negative_caption"),), (), {"source": "sugarcrepe"}))
    return cases


def load_geneval(path: str | Path) -> list[GenerationCase]:
    """GenEval's evaluation_metadata.jsonl ({tag, include: [{class, count, color?, position?}], exclude?, prompt})
    -> generation cases; class -> shape, color -> colour, position [relation, index] -> the case's relation,
    exclude {class, count} -> max_count = count - 1. Judge them with your own detector-based judge."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    cases = []
    for lineno, d in _jsonl_records(path):
        where = f"line {lineno}"
        tag = _field(path, where, d, "tag")
        if tag not in GENEVAL_TAGS:
            raise SuiteError(f"{path}:{lineno}: field 'tag': {tag!r} is not known; accepted: {', '.join(GENEVAL_TAGS)}")
        include = _field(path, where, d, "include", list)
        objs, relation = [], None
        for j, inc in enumerate(include):
            w = f"{where}, include[{j}]"
            pos = inc.get("position") if isinstance(inc, dict) else None
            if pos is not None:
                if (not isinstance(pos, list) or len(pos) != 2 or pos[0] not in _GENEVAL_RELATIONS
                        or not isinstance(pos[1], int) or not 0 <= pos[1] < len(include) or pos[1] == j):
                    raise SuiteError(f"{path}: {w}: field 'position': expected [relation, index] with relation in "
                                     f"{', '.join(_GENEVAL_RELATIONS)} and another include index, got {pos!r}")
                relation = (pos[0], j, pos[1])
            colour = inc.get("color")
            objs.append(ExpectedObject(shape=_field(path, w, inc, "class"), colour=colour,
                                       count=int(_field(path, w, inc, "count", int))))
        for j, exc_d in enumerate(d.get("exclude", []) or []):
            w = f"{where}, exclude[{j}]"
            cls, cnt = _field(path, w, exc_d, "class"), int(_field(path, w, exc_d, "count", int))
            for m, o in enumerate(objs):
                if o.shape == cls and o.colour is None:
                    objs[m] = ExpectedObject(o.shape, None, None, None, o.count, max(o.count, cnt - 1))
                    break
            else:
                objs.append(ExpectedObject(cls, count=0, max_count=cnt - 1))
        try:
            expected = Expected(tuple(objs), relation)
        except (ValueError, TypeError) as exc:
            raise SuiteError(f"{path}:{lineno}: field 'include': {exc}") from None
        cases.append(GenerationCase(f"geneval-{lineno - 1:05d}", tag, _field(path, where, d, "prompt"), expected,
                                    None, (), {"source": "geneval"}))
    return cases


__all__ = ["ARO_KINDS", "SUGARCREPE_FILES", "GENEVAL_TAGS", "load_aro", "load_winoground", "load_sugarcrepe",
           "load_geneval"]
