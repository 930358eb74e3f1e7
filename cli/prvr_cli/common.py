"""Helpers the runtime commands share: error exit, metadata files, opening a Retriever, atomic text output,
and the index engines (``--engine exact|qdrant-edge|qdrant``: where an index lives, opening, creating)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from prvr_sdk.errors import InvalidInputError, PrvrError, exit_code_for
from prvr_sdk.fsutil import atomic_write

err = Console(stderr=True)


def print_error(exc: BaseException) -> None:
    """Print ``error: …`` on stderr, the message escaped: paths and user text may hold ``[brackets]`` that
    rich would otherwise take for markup (and drop, or fail on)."""
    err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)


def fail(exc: PrvrError) -> NoReturn:
    """Print ``error: …`` on stderr and exit with the error's documented code (the one error exit)."""
    print_error(exc)
    raise typer.Exit(code=exit_code_for(exc))


def read_text_file(path: Path, flag: str, max_bytes: int | None = None) -> str:
    """A user's UTF-8 text file, size-checked first (``prvr_sdk.limits``); a bad byte is reported with its
    line number and the CLI flag that named the file."""
    from prvr_sdk.limits import check_text_file

    if not path.is_file():
        raise InvalidInputError(f"{flag} {path}: file not found")
    try:
        check_text_file(path, f"the {flag} file", max_bytes)
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidInputError(f"{flag} {path}: cannot read ({exc.strerror or exc})") from None
    except InvalidInputError as exc:
        raise InvalidInputError(f"{flag} {exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise InvalidInputError(
            f"{flag} {path}:{line}: not UTF-8 text (byte {data[exc.start]:#04x}); save the file as UTF-8"
        ) from None


def _loads(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"{where}: not valid JSON ({exc})") from None
    except RecursionError:
        raise InvalidInputError(f"{where}: JSON nested too deeply to parse") from None


def read_metadata(path: Path | None, max_bytes: int | None = None) -> dict[str, dict[str, Any]]:
    """``video_id -> metadata`` from a JSON object ``{id: {...}}`` or JSON lines each with ``"video_id"``.

    Raises:
        InvalidInputError: missing, too large, not UTF-8 or not JSON (messages give the line), or not of
            either shape.
    """
    if path is None:
        return {}
    text = read_text_file(path, "--metadata", max_bytes)
    if path.suffix == ".jsonl":
        rows = [
            _loads(line, f"--metadata {path}:{lineno}")
            for lineno, line in enumerate(text.splitlines(), 1)
            if line.strip()
        ]
    else:
        value = _loads(text, f"--metadata {path}")
        if isinstance(value, dict):
            bad = [k for k, v in value.items() if not isinstance(v, dict)]
            if bad:
                raise InvalidInputError(f"--metadata {path}: the value of {bad[0]!r} is not an object")
            return value
        if not isinstance(value, list):
            raise InvalidInputError(f"--metadata {path}: expected a JSON object or a list of objects")
        rows = value
    out = {}
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("video_id"), str):
            raise InvalidInputError(f"--metadata {path}: entry {i} is not an object with a 'video_id' string")
        out[row["video_id"]] = {k: v for k, v in row.items() if k != "video_id"}
    return out


def open_retriever(
    bundle: Path, backend: str, device: str, trusted_keys: list[Path] | None = None, precision: str = "fp32"
):
    """The bundle's Retriever; with ``--trusted-key`` given, only if one of those keys signed it.
    ``precision`` (``--precision``): which graphs run; fp16/int8 need ``prvr calibrate`` first."""
    from prvr_sdk import Retriever

    retriever = Retriever.from_bundle(
        bundle, backend=backend, device=device, precision=precision, trusted_keys=trusted_keys or None
    )
    shown = "" if precision == "fp32" else f", {precision}"
    err.print(
        f"{retriever.model_name}: {retriever.choice.backend} on {retriever.choice.device}{shown} "
        f"({retriever.choice.reason})",
        highlight=False,
        markup=False,
    )
    return retriever


def recorded_bundle(index: Path) -> Path:
    """The bundle path an exact index recorded at build time (``--bundle`` overrides it)."""
    from prvr_sdk.index import ExactIndex

    loaded = ExactIndex.load(index)
    recorded = loaded.bundle_path
    loaded.close()
    return _recorded(recorded, str(index))


def check_out(path: Path | str, flag: str = "--out", dir_ok: bool = False) -> None:
    """Fail fast, before hours of work, when ``path`` cannot be written: a folder where a file belongs
    (unless ``dir_ok``), a parent that is a file, or a nearest existing folder that is not writable."""
    path = Path(path)
    if path.is_dir():
        if not dir_ok:
            raise InvalidInputError(f"{flag} {path}: is a directory; expected a file path")
        path = path / "x"  # the file will go inside
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise InvalidInputError(f"{flag} {path}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InvalidInputError(f"{flag} {path}: cannot write in {parent} (permission denied)")


def out_error(path: Path | str, exc: OSError, flag: str = "--out") -> InvalidInputError:
    """An ``OSError`` from writing ``flag``'s path as the CLI's bad-input error (exit 2)."""
    return InvalidInputError(f"{flag} {path}: cannot write ({exc.strerror or exc})")


def write_lines_atomic(path: Path, lines: Iterable[str], flag: str = "--out") -> None:
    """Write text lines to ``path`` atomically (``prvr_sdk.fsutil.atomic_write``), streaming them.

    Raises:
        InvalidInputError: the file cannot be written (the message names ``flag``).
    """

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            for line in lines:
                f.write(line + "\n")

    try:
        atomic_write(path, write)
    except OSError as exc:
        raise out_error(path, exc, flag) from None


# ---------------------------------------------------------------------- index engines (--engine)

ENGINES = ("exact", "qdrant-edge", "qdrant")
EngineOpt = Annotated[
    str,
    typer.Option("--engine", help="exact: prvr's on-disk exact index in a folder. qdrant-edge: Qdrant "
                 "embedded in this process, in a folder. qdrant: a collection on a Qdrant server or "
                 "cluster (--url, --collection; API key from $QDRANT_API_KEY). Both qdrant engines need "
                 "pip install 'prvr-sdk\\[qdrant]'."),
]
UrlOpt = Annotated[
    str | None,
    typer.Option("--url", help="--engine qdrant: the server, http(s)://host:6333; or local:PATH "
                 "(qdrant-client's local mode on a folder, no server, one process at a time: for tests)."),
]
CollectionOpt = Annotated[
    str | None,
    typer.Option("--collection", help="--engine qdrant: the collection \\[default: prvr-<model>-<first 12 "
                 "hex of the bundle's embedding space>, when the bundle is known]."),
]


@dataclass(frozen=True)
class IndexTarget:
    """Where an index lives, per engine: a folder (``exact``, ``qdrant-edge``) or a server's collection."""

    engine: str
    path: Path | None = None
    url: str | None = None
    collection: str | None = None

    def __str__(self) -> str:
        if self.engine == "qdrant":
            return f"collection {self.collection!r} at {self.url}"
        return str(self.path)

    @property
    def qdrant(self) -> bool:
        return self.engine != "exact"


def index_target(
    engine: str, path: Path | None, url: str | None, collection: str | None, path_flag: str = "--index"
) -> IndexTarget:
    """Check that the flags fit the engine (a folder for ``exact``/``qdrant-edge``, ``--url`` for
    ``qdrant``), and that the engine's library is installed -- before any work.

    Raises:
        InvalidInputError: an unknown engine, or flags of another engine. BackendUnavailableError: the
            ``qdrant`` extra is missing (names ``pip install "prvr-sdk[qdrant]"``).
    """
    if engine not in ENGINES:
        raise InvalidInputError(f"--engine: expected one of {', '.join(ENGINES)}; got {engine!r}")
    if engine == "qdrant":
        if url is None:
            raise InvalidInputError("--engine qdrant: pass --url http(s)://host:6333 (or local:PATH)")
        if path is not None:
            raise InvalidInputError(f"--engine qdrant keeps the index in a collection (--url, --collection); "
                                    f"{path_flag} is for --engine exact or qdrant-edge")
        from prvr_sdk.index.qdrant import require_engine

        require_engine(engine)
        return IndexTarget(engine, url=url, collection=collection)
    if url is not None or collection is not None:
        raise InvalidInputError(f"--url and --collection are for --engine qdrant (this is --engine {engine})")
    if path is None:
        raise InvalidInputError(f"--engine {engine}: pass {path_flag} DIR")
    if engine == "qdrant-edge":
        from prvr_sdk.index.qdrant import require_engine

        require_engine(engine)
    return IndexTarget(engine, path=path)


def default_collection(retriever) -> str:
    """``prvr-<model>-<12 hex of the embedding space>``: one collection per model and embedding space, so
    two bundles never share one by default."""
    return f"prvr-{retriever.model_name}-{retriever.bundle_sha256[:12]}"


_NO_COLLECTION = ("--engine qdrant: pass --collection NAME (or --bundle, whose default collection is "
                  "prvr-<model>-<embedding space>)")


def open_index(target: IndexTarget):
    """Open an existing index of any engine (no bundle check: ``Retriever.load_index`` does that).

    Raises:
        IndexFormatError: not an index (exit 5). IndexLockedError: a qdrant-edge folder open elsewhere (7).
        InvalidInputError: ``--engine qdrant`` without a collection name.
    """
    if target.engine == "exact":
        from prvr_sdk.index import ExactIndex

        return ExactIndex.load(target.path)
    if target.engine == "qdrant-edge":
        from prvr_sdk.index.qdrant import QdrantEdgeIndex

        return QdrantEdgeIndex.load(target.path)
    if target.collection is None:
        raise InvalidInputError(_NO_COLLECTION)
    from prvr_sdk.index.qdrant import QdrantRemoteIndex

    return QdrantRemoteIndex.load(target.url, collection=target.collection)


def _recorded(bundle_path: str | None, where: str) -> Path:
    if not bundle_path:
        raise InvalidInputError(f"index {where} records no bundle path; pass --bundle")
    if not Path(bundle_path).is_dir():
        raise InvalidInputError(f"index {where} was built with bundle {bundle_path}, which no longer exists; "
                                "pass --bundle")
    return Path(bundle_path)


def attach_index(target: IndexTarget, bundle: Path | None, backend: str, device: str,
                 trusted_keys: list[Path] | None, precision: str):
    """The Retriever (``bundle``, else the one the index records) with the index at ``target`` attached
    and checked against it (``IndexMismatchError``, exit 6, for another bundle). The index of any engine is
    opened once -- it also says which bundle it was built with -- and handed over as an object; the caller
    closes ``retriever.index``."""
    # A given bundle is checked first (its problems are the user's to fix before any index is touched).
    retriever = open_retriever(bundle, backend, device, trusted_keys, precision) if bundle else None
    if target.engine == "qdrant" and target.collection is None:
        if retriever is None:
            raise InvalidInputError(_NO_COLLECTION)
        target = replace(target, collection=default_collection(retriever))
    index = open_index(target)
    try:
        if retriever is None:
            retriever = open_retriever(_recorded(index.bundle_path, str(target)), backend, device,
                                       trusted_keys, precision)
        retriever.load_index(index)
    except BaseException:
        index.close()
        raise
    return retriever


def create_index(target: IndexTarget, retriever, path: Path | None = None):
    """A new, empty qdrant index bound to ``retriever``'s bundle, at ``path`` (qdrant-edge: a staging
    folder) or ``target``'s collection."""
    bound = {
        "bundle_sha256": retriever.bundle_sha256,
        "model": retriever.model_name,
        "bundle_path": str(Path(retriever.bundle.path).resolve()),
    }
    if target.engine == "qdrant-edge":
        from prvr_sdk.index.qdrant import QdrantEdgeIndex

        return QdrantEdgeIndex(path or target.path, retriever.dim, retriever.scoring, **bound)
    from prvr_sdk.index.qdrant import QdrantRemoteIndex

    return QdrantRemoteIndex(retriever.dim, retriever.scoring, **bound, url=target.url,
                             collection=target.collection)
