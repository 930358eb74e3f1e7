"""`prvr search`: sentences in, the best videos and the moment in each out.

One query prints a table (rank, video, score, moment) or, with --json, one JSON line per hit; a file of
queries (--queries, one per line) writes a ranked JSONL file (--out, atomic) or JSON lines to stdout. Bundles
without a text front end take precomputed backbone features instead (--query-features .npy/.npz).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from prvr_cli.common import (
    CollectionOpt,
    EngineOpt,
    UrlOpt,
    attach_index,
    check_out,
    err,
    fail,
    index_target,
    read_text_file,
    write_lines_atomic,
)
from prvr_cli.encode import BackendOpt, DeviceOpt, PrecisionOpt, TrustedKeyOpt
from prvr_sdk.errors import InvalidInputError, PrvrError

BATCH = 256  # queries per search call for --queries files
COLUMNS = ("rank", "video", "score", "moment")  # the single-query table
JUSTIFY = ("right", "left", "right", "right")


def _moment(start: float | None, end: float | None) -> str:
    return "–" if start is None or end is None else f"{start:.1f}–{end:.1f} s"


def _read_queries(path: Path) -> list[str]:
    queries = [line.strip() for line in read_text_file(path, "--queries").splitlines() if line.strip()]
    if not queries:
        raise InvalidInputError(f"--queries {path}: no queries (one per line)")
    return queries


def _read_features(path: Path) -> tuple[list[str], list[np.ndarray]]:
    """Query features, each array's header checked against the default size limits before it is read."""
    from prvr_sdk.limits import check_array, load_npy, npz_headers, read_npz_member

    if not path.is_file():
        raise InvalidInputError(f"--query-features {path}: file not found")
    try:
        if path.suffix == ".npz":
            headers = npz_headers(path)
            for key, (shape, dtype) in headers.items():
                check_array(shape, dtype, f"{path}:{key}")
            with np.load(path, allow_pickle=False) as z:
                return list(z.files), [read_npz_member(z, path, k) for k in z.files]
        return [path.stem], [load_npy(path)]
    except InvalidInputError as exc:
        raise InvalidInputError(f"--query-features {exc}") from None
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"--query-features {path}: not a readable .npy/.npz file ({exc})") from None


def _parse_filter(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"--filter: not valid JSON ({exc}); e.g. '{{\"split\": \"test\"}}'") from None
    if not isinstance(value, dict):
        raise InvalidInputError("--filter: expected a JSON object, e.g. '{\"duration\": {\"$gte\": 60}}'")
    return value


def search(
    query: Annotated[str | None, typer.Argument(help="The sentence to search for.")] = None,
    index: Annotated[
        Path | None,
        typer.Option("--index", "--path", help="Index directory (prvr index build; --engine exact or "
                     "qdrant-edge) \\[default: index]."),
    ] = None,
    bundle: Annotated[
        Path | None, typer.Option("--bundle", help="Bundle \\[default: the one the index records].")
    ] = None,
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="Hits per query.")] = 10,
    filter: Annotated[
        str | None, typer.Option("--filter", help="Metadata filter as JSON, e.g. '{\"split\": \"test\"}'.")
    ] = None,
    group_by: Annotated[str, typer.Option("--group-by", help="video (one hit per video) or clip.")] = "video",
    min_score: Annotated[float | None, typer.Option("--min-score", help="Drop hits scoring below.")] = None,
    queries: Annotated[
        Path | None, typer.Option("--queries", help="A text file of queries, one per line (batch mode).")
    ] = None,
    query_features: Annotated[
        Path | None,
        typer.Option("--query-features", help="Precomputed backbone features: .npy (one query) or .npz "
                     "(one array per query) for bundles without a text front end."),
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Batch mode: ranked JSONL file to write.")] = None,
    engine: EngineOpt = "exact",
    url: UrlOpt = None,
    collection: CollectionOpt = None,
    backend: BackendOpt = "auto",
    device: DeviceOpt = "auto",
    trusted_key: TrustedKeyOpt = None,
    precision: PrecisionOpt = "fp32",
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines (one per hit) on stdout.")] = False,
) -> None:
    """Search an index with a sentence (or a file of sentences); print the hits with their moments.

    One QUERY prints a table (rank, video, score, moment), or JSON lines with --json. --queries FILE
    (one query per line) or --query-features FILE writes JSON lines {query_index, query, rank, hit...}
    to --out (atomic) or stdout.

    --engine qdrant-edge (--index DIR) or qdrant (--url, --collection) searches a Qdrant index exactly:
    the same hits as the exact index (string range filters such as {"$gt": "b"} are refused there).

    Exit codes: 0 ok; 2 bad input (bad --filter JSON, not exactly one query source, strings for a bundle
    without a text front end, no bundle to use); 3 backend (or the qdrant extra) not installed; 5 bundle
    or index corrupt; 6 index built with another bundle; 7 a qdrant-edge folder open in another process.
    """
    try:
        given = [q for q in (query, queries, query_features) if q is not None]
        if len(given) != 1:
            raise InvalidInputError("give exactly one of QUERY, --queries FILE and --query-features FILE")
        if out is not None and queries is None and query_features is None:
            raise InvalidInputError("--out is for batch mode (--queries or --query-features)")
        if out is not None:
            check_out(out)  # before loading anything
        where = _parse_filter(filter)
        if index is None and engine != "qdrant":
            index = Path("index")
        target = index_target(engine, index, url, collection)
        retriever = attach_index(target, bundle, backend, device, trusted_key, precision)
        try:
            texts, hits = _search(retriever, query, queries, query_features, top_k, where, group_by,
                                  min_score)
        finally:
            retriever.index.close()
    except PrvrError as exc:
        fail(exc)
    _print(texts, hits, query, as_json, out, top_k, target)


def _search(retriever, query, queries, query_features, top_k, where, group_by, min_score):
    """Encode the queries (one, a file of sentences, or backbone features) and search in batches."""
    if query is not None:
        texts, emb = [query], retriever.encode_text([query], show_progress=False)  # one query: no bar
    elif queries is not None:
        texts = _read_queries(queries)
        emb = retriever.encode_text(texts, batch_size=64, show_progress=None)
    else:
        texts, features = _read_features(query_features)
        emb = retriever.encode_text(features)
    hits = []
    for start in range(0, len(texts), BATCH):
        hits.extend(retriever.search(emb[start : start + BATCH], top_k=top_k, filter=where,
                                     group_by=group_by, min_score=min_score))
    return texts, hits


def _print(texts, hits, query, as_json, out, top_k, target) -> None:
    """A table for one query; JSON lines for --json or a batch (to --out, atomically, or stdout)."""
    rows = [
        {"query_index": qi, "query": text, "rank": rank, **hit.to_dict()}
        for qi, (text, found) in enumerate(zip(texts, hits, strict=True))
        for rank, hit in enumerate(found, start=1)
    ]
    if query is None or as_json:
        lines = [json.dumps(row) for row in rows]
        if out is not None:
            try:
                write_lines_atomic(out, lines)
            except PrvrError as exc:
                fail(exc)
            err.print(f"{len(texts)} queries, {len(rows)} hits -> {out}", highlight=False, markup=False)
        else:
            for line in lines:
                typer.echo(line)
        return
    cells = [
        (str(r["rank"]), r["video_id"], f"{r['score']:.4f}", _moment(r["start"], r["end"])) for r in rows
    ]
    console = Console()
    if not console.is_terminal:  # piped: plain aligned columns, no box drawing or wrapping
        for line in _plain_table(cells):
            typer.echo(line)
        return
    table = Table(title=f"{query!r}: top {top_k} in {target}", title_justify="left")
    for name, justify in zip(COLUMNS, JUSTIFY, strict=True):
        table.add_column(name, justify=justify)
    for row in cells:
        table.add_row(*row)
    console.print(table)


def _plain_table(cells: list[tuple[str, ...]]) -> list[str]:
    """Header plus one line per hit, columns padded to their widest cell and separated by two spaces."""
    widths = [max(len(c) for c in column) for column in zip(COLUMNS, *cells, strict=True)]
    lines = []
    for row in (COLUMNS, *cells):
        padded = (
            c.rjust(w) if j == "right" else c.ljust(w) for c, w, j in zip(row, widths, JUSTIFY, strict=True)
        )
        lines.append("  ".join(padded).rstrip())
    return lines
