"""What can be embedded: image folders, caption files (.txt, .jsonl exports), lists of items -> Records."""
from __future__ import annotations

import io
import json
import re
import tarfile
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


@dataclass(frozen=True)
class TarMember:
    """An image inside a webdataset tar shard, read in place (seek to its bytes): no extraction."""

    tar: str
    member: str
    offset: int  # of the member's data in the tar file
    size: int
    mtime_ns: int  # of the tar file: part of the job key, so a rewritten shard is embedded again

    def read(self) -> bytes:
        with open(self.tar, "rb") as fh:
            fh.seek(self.offset)
            data = fh.read(self.size)
        if len(data) != self.size:
            raise ValueError(f"{self.tar} is truncated: member {self.member} needs {self.size} bytes at offset "
                             f"{self.offset}, found {len(data)}; re-copy the shard")
        return data

    def open(self) -> Any:
        from PIL import Image
        return Image.open(io.BytesIO(self.read()))

    def load(self) -> Any:
        with self.open() as im:
            return im.convert("RGB")


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


TAR_CAPTION_SUFFIXES = ("txt", "caption", "cap")
_BRACES = re.compile(r"\{(\d+)\.\.(\d+)\}")


def expand_shards(pattern: str) -> list[Path]:
    """webdataset's shard pattern: 'data/shard-{000..009}.tar' -> the ten paths (zero padding kept)."""
    m = _BRACES.search(pattern)
    if m is None:
        return [Path(pattern)]
    lo, hi = int(m.group(1)), int(m.group(2))
    if hi < lo:
        raise ValueError(f"shard pattern {pattern!r}: {{{m.group(1)}..{m.group(2)}}} counts down; write {{low..high}}")
    width = len(m.group(1))
    out: list[Path] = []
    for i in range(lo, hi + 1):
        out += expand_shards(pattern[:m.start()] + str(i).zfill(width) + pattern[m.end():])
    return out


def _sample_key(name: str) -> tuple[str, str]:
    """webdataset's grouping: 'dir/0001.seg.jpg' -> key 'dir/0001', extension 'seg.jpg'."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _records_from_tars(tars: Sequence[Path], kind: str) -> list[Record]:
    """Records of webdataset shards: each sample (members sharing a key) gives its image and/or its caption
    (.txt / .caption member, or "caption" in its .json, whose other fields become metadata columns)."""
    missing = [str(t) for t in tars if not t.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} tar shard(s) not found, e.g. {missing[:3]}; check the path or the "
                                "{000..009} range of the pattern")
    images, texts = [], []
    for tar in tars:
        mtime = tar.stat().st_mtime_ns
        samples: dict[str, dict[str, tarfile.TarInfo]] = {}
        try:
            with tarfile.open(tar, "r:") as tf:  # uncompressed, as webdataset writes: members are read in place
                for info in tf:
                    if info.isfile():
                        key, ext = _sample_key(info.name)
                        samples.setdefault(key, {})[ext] = info
                captions = {}
                metas = {}
                for key, members in samples.items():
                    for ext in TAR_CAPTION_SUFFIXES:
                        if ext in members:
                            captions[key] = tf.extractfile(members[ext]).read().decode("utf-8").strip()
                            break
                    if "json" in members:
                        try:
                            metas[key] = json.loads(tf.extractfile(members["json"]).read())
                        except json.JSONDecodeError:
                            raise ValueError(f"{tar}: {members['json'].name} is not JSON; fix or drop it") from None
                        if key not in captions and isinstance(metas[key], dict) and "caption" in metas[key]:
                            captions[key] = str(metas[key]["caption"])
        except tarfile.ReadError as exc:
            raise ValueError(f"{tar} is not a readable (uncompressed) tar ({exc}); webdataset shards are plain "
                             ".tar files") from None
        for key, members in samples.items():
            extra: dict[str, Any] = {"file": f"{tar.name}/{key}", "shard": tar.name}
            meta = metas.get(key)
            if isinstance(meta, dict):
                for k, v in meta.items():
                    if k in REQUIRED_COLUMNS or k in extra:
                        k = f"input_{k}"
                    extra.update(flatten(v, k) if isinstance(v, (dict, list, tuple)) else {k: v})
            if key in captions:
                extra["caption"] = captions[key]
            image_ext = next((e for e in members if "." + e.rsplit(".", 1)[-1] in IMAGE_SUFFIXES), None)
            if kind in ("image", "both") and image_ext is not None:
                info = members[image_ext]
                images.append(Record(f"image:{tar.name}/{key}", "image", f"{tar}::{info.name}",
                                     TarMember(str(tar), info.name, info.offset_data, info.size, mtime), dict(extra)))
            if kind in ("text", "both") and key in captions:
                texts.append(Record(f"text:{tar.name}/{key}", "text", captions[key], captions[key], dict(extra)))
    if not images and not texts:
        what = {"image": "images", "text": "captions (.txt / .caption members)", "both": "images or captions"}[kind]
        raise ValueError(f"the tar shard(s) {[str(t) for t in tars[:3]]} hold no {what}; webdataset samples are "
                         "members sharing a key, e.g. 0001.jpg + 0001.txt")
    return images + texts


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

    kind None picks: folder -> image, .txt / list of str -> text, captions.jsonl -> both, webdataset shards (a
    .tar, a folder of .tar files, or a pattern such as 'shards/{0000..0099}.tar') -> both.
    """
    if kind is not None:
        check_choice("kind", kind, INPUT_KINDS)
    if isinstance(items, (str, Path)):
        path = Path(items)
        if _BRACES.search(str(items)):
            return _records_from_tars(expand_shards(str(items)), kind or "both")
        if not path.exists():
            raise FileNotFoundError(f"input not found: {path}; pass an image folder, a captions.jsonl, "
                                    "a .txt with one caption per line or webdataset .tar shards")
        if path.is_dir():
            tars = sorted(p for p in path.iterdir() if p.suffix == ".tar")
            if tars and not any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir()):
                return _records_from_tars(tars, kind or "both")  # a folder of webdataset shards
            if (path / "captions.jsonl").exists():  # a ShapesWorld export folder
                return _records_from_jsonl(path / "captions.jsonl", kind or "both")
            return _records_from_folder(path, kind or "image")
        if path.suffix == ".jsonl":
            return _records_from_jsonl(path, kind or "both")
        if path.suffix == ".txt":
            return _records_from_txt(path, kind or "text")
        if path.suffix == ".tar":
            return _records_from_tars([path], kind or "both")
        if path.suffix.lower() in IMAGE_SUFFIXES:
            return _records_from_list([path], kind or "image")
        raise ValueError(f"input {path} has an unknown suffix {path.suffix!r}; accepted: a folder of images, "
                         "'.jsonl' (captions.jsonl), '.txt' (one caption per line), '.tar' (webdataset shard) or an image "
                         "file")
    if isinstance(items, Sequence) and not isinstance(items, (bytes, bytearray)):
        if len(items) == 0:
            raise ValueError("items is empty; pass at least one caption or image")
        if kind is None:
            kind = "text" if all(isinstance(x, str) for x in items) else "image"
        return _records_from_list(items, kind)
    raise TypeError(f"items must be a path (folder, .jsonl, .txt) or a list of captions/images, "
                    f"got {type(items).__name__}")


def _unreadable_images(records: Sequence[Record], progress: bool = False,
                       part: tuple[int, int] = (0, 1)) -> list[dict[str, Any]]:
    """Image records whose file PIL cannot read (row, id, source, error); in-memory images are trusted.
    part=(rank, world_size) checks every world_size-th image file only (distributed embedding splits the check)."""
    from PIL import Image
    from tqdm.auto import tqdm
    bad = []
    rows = [i for i, r in enumerate(records)
            if r.kind == "image" and isinstance(r.payload, (str, Path, TarMember))][part[0]::part[1]]
    for i in tqdm(rows, desc="checking images", unit="file", disable=not progress or len(rows) < 2000):
        r = records[i]
        try:
            with (r.payload.open() if isinstance(r.payload, TarMember) else Image.open(r.payload)) as im:
                im.verify()
        except Exception as e:  # UnidentifiedImageError, truncated data, bad CRC, unreadable file
            bad.append({"row": i, "id": r.id, "source": str(r.source), "error": type(e).__name__})
    return bad
