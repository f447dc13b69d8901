"""`unclip-explorer embed / neighbors / models`: embedding stores and the bundled models."""
from __future__ import annotations

import argparse
import json

from explorer.commands import Command, _args
from explorer.store import DTYPES, INPUT_KINDS, MANIFEST


def _truncate(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[:width - 1] + "…"


# ----------------------------------------------------------------------------------------- embed
def _embed_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("embed", help="embed images and/or captions into an embedding store",
                       description="Embed an image folder, a captions.jsonl (ShapesWorld export), a .txt "
                                   "(one caption per line) into STORE. Rerun a killed call to resume.")
    p.add_argument("input", metavar="INPUT", help="image folder, captions.jsonl, export folder or .txt")
    p.add_argument("--model", required=True, metavar="SPEC", help="CLIP model, e.g. shapes-clip")
    p.add_argument("--out", required=True, metavar="STORE", help="store folder (created or appended to)")
    p.add_argument("--kind", choices=INPUT_KINDS, default=None,
                   help="what to embed (default: folder->image, .txt->text, captions.jsonl->both)")
    p.add_argument("--batch-size", type=_args.positive_int, default=64)
    p.add_argument("--chunk-size", type=_args.positive_int, default=1024, help="rows per resumable chunk")
    p.add_argument("--dtype", choices=DTYPES, default="float16")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave out unreadable image files and record them in store.json (default: refuse them)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--distributed", action="store_true",
                   help="under torchrun: each rank embeds a disjoint shard into STORE/.shards, rank 0 merges them "
                        "(same store as one process); `torchrun --nproc_per_node=N -m explorer.embed ...` sets this")
    return p


def _embed_distributed(args: argparse.Namespace) -> int:
    from explorer.store.distributed import run_torchrun
    options = {"kind": args.kind, "batch_size": args.batch_size, "chunk_size": args.chunk_size,
               "dtype": args.dtype, "progress": not args.no_progress, "skip_bad": args.skip_bad}
    store = run_torchrun(args.model, args.input, args.out, options=options)
    import os
    if store is not None and os.environ.get("RANK") == "0":
        print(f"{store.path}: {len(store)} vectors, dim {store.dim}, {store.dtype}, model {store.model_spec} "
              f"(merged from {os.environ.get('WORLD_SIZE')} ranks)")
    return 0


def _embed_run(args: argparse.Namespace) -> int:
    if args.distributed:
        return _embed_distributed(args)
    from explorer import api
    before = 0
    try:
        before = len(api.open_store(args.out))
    except FileNotFoundError:
        pass
    store = api.embed(args.input, args.model, args.out, kind=args.kind, batch_size=args.batch_size,
                      chunk_size=args.chunk_size, dtype=args.dtype, progress=not args.no_progress,
                      skip_bad=args.skip_bad)
    print(f"{store.path}: {len(store)} vectors ({len(store) - before} new), dim {store.dim}, {store.dtype}, "
          f"model {store.model_spec}")
    skipped = store._manifest.get("skipped", [])
    if skipped:
        print(f"skipped {len(skipped)} unreadable file(s), listed in {store.path / MANIFEST}: "
              + ", ".join(s["source"] for s in skipped[:5]) + (" ..." if len(skipped) > 5 else ""))
    return 0


# ----------------------------------------------------------------------------------------- neighbors
def _neighbors_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("neighbors", help="nearest neighbours (exact cosine) in an embedding store")
    p.add_argument("store", metavar="STORE")
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--text", help="query caption")
    q.add_argument("--image", metavar="PATH", help="query image file")
    q.add_argument("--id", help="id of a row of the store")
    p.add_argument("-k", type=_args.positive_int, default=10, help="number of neighbours (default 10)")
    p.add_argument("--model", metavar="SPEC", default=None,
                   help="encoder for --text/--image (default: the store's model)")
    p.add_argument("--json", action="store_true", help="print JSON records instead of a table")
    return p


def _neighbors_run(args: argparse.Namespace) -> int:
    from explorer import api
    store = api.open_store(args.store)
    df = api.neighbors(store, text=args.text, image=args.image, id=args.id, k=args.k, model=args.model)
    cols = ["rank", "score", "id", "kind", "source"]
    if args.json:
        print(json.dumps(df[cols].to_dict(orient="records"), indent=1))
        return 0
    id_w = min(max(len("id"), *(len(str(i)) for i in df["id"])), 40)
    print(f"{'rank':>4}  {'score':>7}  {'id':<{id_w}}  source")
    for r in df.itertuples():
        print(f"{r.rank:>4}  {r.score:>7.4f}  {_truncate(r.id, id_w):<{id_w}}  {_truncate(r.source, 70)}")
    return 0


# ----------------------------------------------------------------------------------------- models
def _models_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("models", help="list the bundled models")
    p.add_argument("--json", action="store_true")
    return p


def _models_run(args: argparse.Namespace) -> int:
    from explorer import api
    df = api.list_models()
    if args.json:
        print(json.dumps(df.to_dict(orient="records"), indent=1))
    elif df.empty:
        print(f"no bundled models in {api.bundled_dir()}")
    else:
        print(df.to_string(index=False))
    return 0


# ----------------------------------------------------------------------------------------- index
def _index_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("index", help="approximate-neighbour (faiss) indexes of a store",
                       description="Build a faiss index of a store's vectors and save it beside them (STORE/index/); "
                                   "`neighbors` uses it while it is fresh, and searches exactly when the store has "
                                   "been appended to since (a warning says so).")
    isub = p.add_subparsers(dest="index_command", metavar="{build}", required=True)
    b = isub.add_parser("build", help="train and fill a faiss index of STORE")
    b.add_argument("store", metavar="STORE")
    b.add_argument("--key", default=None, help="faiss factory key, e.g. IVF1024,Flat, IVF4096,PQ64, HNSW32,Flat "
                                               "(default: Flat below 10,000 rows, IVF{4 sqrt(n)},Flat above)")
    b.add_argument("--train-rows", type=_args.positive_int, default=200_000, help="rows drawn to train the index")
    b.add_argument("--no-progress", action="store_true")
    return p


def _index_run(args: argparse.Namespace) -> int:
    from explorer.store import open_store
    from explorer.store.index import build_index
    store = open_store(args.store)
    folder = build_index(store, args.key, train_rows=args.train_rows, progress=not args.no_progress)
    meta = json.loads((folder / "index.json").read_text())
    print(f"{folder}: {meta['key']} over {meta['n']} rows (search {meta['params'] or 'exhaustive'})")
    return 0


COMMANDS = [Command("embed", _embed_parser, _embed_run), Command("index", _index_parser, _index_run),
            Command("neighbors", _neighbors_parser, _neighbors_run),
            Command("models", _models_parser, _models_run)]
