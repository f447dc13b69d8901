"""What can be embedded: image folders, caption files (.txt, .jsonl exports), lists of items -> Records."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence


from unclip_core.checks import check_choice

from explorer.store.format import PARTIAL_DIR, REQUIRED_COLUMNS
from explorer.store.format import IMAGE_SUFFIXES, INPUT_KINDS

class Encoder(Protocol):
    """What `embed_items` needs from a CLIP encoder (unclip_core.clip.ClipEncoder satisfies it)."""

    embed_dim: int
    spec: str
    model_id: str

    def encode_text(self, texts: list[str]) -> Any: ...

    def encode_image(self, images: list[Any]) -> Any: ...


@dataclass(frozen=True)
class Record:
    """One row to embed: its id, kind, source (path or caption), payload (image or caption) and extras."""

    id: str
    kind: str
    source: str
    payload: Any
    extra: dict[str, Any] = field(default_factory=dict)


def flatten(obj: Any, prefix: str) -> dict[str, Any]:
    """Nested dicts/lists -> flat {"prefix.a.0.b": value} columns (pandas.json_normalize naming)."""
    out: dict[str, Any] = {}
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            out.update(flatten(value, f"{prefix}.{key}"))
    elif isinstance(obj, (list, tuple)):
        out[f"{prefix}.n"] = len(obj)
        for i, value in enumerate(obj):
            out.update(flatten(value, f"{prefix}.{i}"))
    else:
        out[prefix] = obj
    return out


def _records_from_folder(folder: Path, kind: str) -> list[Record]:
    if kind != "image":
        raise ValueError(f"kind={kind!r} does not fit a folder of images ({folder}); use kind='image', "
                         "or pass a captions.jsonl / .txt file for text")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and PARTIAL_DIR not in p.parts)
    if not files:
        raise ValueError(f"folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}); "
                         "pass a folder with images, a captions.jsonl or a .txt of captions")
    return [Record(f"image:{p.relative_to(folder).as_posix()}", "image", str(p), p) for p in files]


def _records_from_jsonl(path: Path, kind: str) -> list[Record]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path} line {lineno} is not JSON ({exc.msg}); each line must be an object "
                                 '{"file": ..., "caption": ..., "scene": ...}') from None
    if not rows:
        raise ValueError(f"{path} is empty; it needs one JSON object per line with 'file' and 'caption'")
    images, texts = [], []
    for lineno, row in enumerate(rows, 1):
        if not isinstance(row, dict) or "file" not in row or "caption" not in row:
            raise ValueError(f"{path} row {lineno} lacks 'file' or 'caption' (got {str(row)[:80]}); "
                             "use the captions.jsonl written by `unclip-explorer shapes export`")
        file = str(row["file"])
        img = path.parent / file
        if not img.exists() and (path.parent / "images" / file).exists():
            img = path.parent / "images" / file
        extra: dict[str, Any] = {"file": file, "caption": str(row["caption"])}
        for key, value in row.items():
            if key in ("file", "caption"):
                continue
            if key in REQUIRED_COLUMNS:  # the store writes these itself; keep the input's under another name
                key = f"input_{key}"
            if isinstance(value, (dict, list, tuple)):
                extra[key] = json.dumps(value, sort_keys=True)  # keeps the exact structure
                extra.update(flatten(value, key))
            else:
                extra[key] = value
        if kind in ("image", "both"):
            if not img.exists():
                raise FileNotFoundError(f"{path} row {lineno} names image {file!r}, not found at {img}")
            images.append(Record(f"image:{file}", "image", str(img), img, extra))
        if kind in ("text", "both"):
            texts.append(Record(f"text:{file}", "text", str(row["caption"]), str(row["caption"]), extra))
    return images + texts


def _records_from_txt(path: Path, kind: str) -> list[Record]:
    if kind != "text":
        raise ValueError(f"kind={kind!r} does not fit a .txt of captions ({path}); use kind='text'")
    out = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            caption = line.strip()
            if caption:
                out.append(Record(f"text:{path.name}:{lineno}", "text", caption, caption))
    if not out:
        raise ValueError(f"{path} holds no captions; write one caption per line")
    return out


def _records_from_list(items: Sequence[Any], kind: str | None) -> list[Record]:
    out = []
    for i, item in enumerate(items):
        is_image_obj = hasattr(item, "convert") and hasattr(item, "size")  # a PIL image
        if isinstance(item, Path) or is_image_obj or (isinstance(item, str) and kind == "image"):
            if kind == "text":
                raise TypeError(f"items[{i}] is an image ({type(item).__name__}) but kind='text'; "
                                "pass captions as str, or kind='image'")
            if is_image_obj:
                out.append(Record(f"image:{i}", "image", f"<{type(item).__name__} {i}>", item))
            else:
                out.append(Record(f"image:{Path(item).as_posix()}", "image", str(item), Path(item)))
        elif isinstance(item, str):
            if kind == "both":
                raise ValueError("kind='both' needs a captions.jsonl (image and caption pairs), "
                                 "not a list; use kind='image' or 'text'")
            out.append(Record(f"text:{i}", "text", item, item))
        else:
            raise TypeError(f"items[{i}] must be a caption (str), an image path or a PIL image, "
                            f"got {type(item).__name__}")
    return out


def resolve_items(items: str | Path | Sequence[Any], kind: str | None = None) -> list[Record]:
    """Turn an input (image folder, captions.jsonl, .txt, or a list) into records with stable ids.

    kind None picks: folder -> image, .txt / list of str -> text, captions.jsonl -> both.
    """
    if kind is not None:
        check_choice("kind", kind, INPUT_KINDS)
    if isinstance(items, (str, Path)):
        path = Path(items)
        if not path.exists():
            raise FileNotFoundError(f"input not found: {path}; pass an image folder, a captions.jsonl "
                                    "or a .txt with one caption per line")
        if path.is_dir():
            if (path / "captions.jsonl").exists():  # a ShapesWorld export folder
                return _records_from_jsonl(path / "captions.jsonl", kind or "both")
            return _records_from_folder(path, kind or "image")
        if path.suffix == ".jsonl":
            return _records_from_jsonl(path, kind or "both")
        if path.suffix == ".txt":
            return _records_from_txt(path, kind or "text")
        if path.suffix.lower() in IMAGE_SUFFIXES:
            return _records_from_list([path], kind or "image")
        raise ValueError(f"input {path} has an unknown suffix {path.suffix!r}; accepted: a folder of images, "
                         "'.jsonl' (captions.jsonl), '.txt' (one caption per line) or an image file")
    if isinstance(items, Sequence) and not isinstance(items, (bytes, bytearray)):
        if len(items) == 0:
            raise ValueError("items is empty; pass at least one caption or image")
        if kind is None:
            kind = "text" if all(isinstance(x, str) for x in items) else "image"
        return _records_from_list(items, kind)
    raise TypeError(f"items must be a path (folder, .jsonl, .txt) or a list of captions/images, "
                    f"got {type(items).__name__}")


def _unreadable_images(records: Sequence[Record], progress: bool = False) -> list[dict[str, Any]]:
    """Image records whose file PIL cannot read (row, id, source, error); in-memory images are trusted."""
    from PIL import Image
    from tqdm.auto import tqdm
    bad = []
    rows = [i for i, r in enumerate(records) if r.kind == "image" and isinstance(r.payload, (str, Path))]
    for i in tqdm(rows, desc="checking images", unit="file", disable=not progress or len(rows) < 2000):
        r = records[i]
        try:
            with Image.open(r.payload) as im:
                im.verify()
        except Exception as e:  # UnidentifiedImageError, truncated data, bad CRC, unreadable file
            bad.append({"row": i, "id": r.id, "source": str(r.source), "error": type(e).__name__})
    return bad
