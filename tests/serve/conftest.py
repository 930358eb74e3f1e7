"""Fixtures for the `prvr serve` tests: a golden bundle, a small index built from it, a live HTTP server.

The server is real uvicorn on 127.0.0.1 (a free port, in a thread of this process) and the client is
httpx, so requests go through sockets, HTTP parsing, FastAPI validation and JSON both ways. The oracle
is ``Retriever.search`` in this process on the same bundle and index.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from prvr_sdk import Retriever  # noqa: E402
from prvr_sdk.serve import SearchService, ServeConfig, ServeLimits, create_app  # noqa: E402

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
BUNDLE = GOLDEN / "amdnet" / "bundle"  # max_clip scoring, 32-d, sentence features (no text front end)
LIMITS = ServeLimits(max_batch=8, max_query_chars=50, max_top_k=20, max_body_bytes=64 << 10)


def golden_videos() -> list[np.ndarray]:
    data = np.load(GOLDEN / "amdnet" / "golden.npz")
    return [data[f"video_{i}"] for i in range(4)]


def golden_queries() -> np.ndarray:
    data = np.load(GOLDEN / "amdnet" / "golden.npz")
    return np.stack([data[f"query_{j}"] for j in range(5)])


def build_index(retriever: Retriever, path: Path) -> Path:
    """12 videos: the 4 golden ones and 8 random ones of mixed lengths, with metadata to filter on."""
    rng = np.random.default_rng(7)
    videos = golden_videos() + [
        rng.standard_normal((int(n), videos_dim(retriever))).astype(np.float32)
        for n in (2, 3, 7, 9, 11, 4, 6, 30)
    ]
    ids = [f"v{i:02d}" for i in range(len(videos))]
    meta = [{"n": i, "split": "test" if i % 3 == 0 else "train"} for i in range(len(videos))]
    retriever.index = retriever.new_index()
    retriever.add(retriever.encode_video(videos, fps=1.0, video_ids=ids), metadata=meta)
    retriever.index.save(path)
    return path


def videos_dim(retriever: Retriever) -> int:
    return int(retriever.manifest["video_input"]["feature_dim"])


class Server:
    """uvicorn serving ``app`` on a free loopback port in a daemon thread; ``stop()`` shuts it down."""

    def __init__(self, app) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def retriever() -> Retriever:
    return Retriever.from_bundle(BUNDLE, device="cpu")


@pytest.fixture(scope="module")
def index_dir(retriever, tmp_path_factory) -> Path:
    return build_index(retriever, tmp_path_factory.mktemp("serve") / "index")


@pytest.fixture(scope="module")
def oracle(index_dir) -> Retriever:
    """A second Retriever with the saved index attached: what the server must answer."""
    return Retriever.from_bundle(BUNDLE, device="cpu", index=index_dir)


def start(
    index_dir: Path, limits: ServeLimits = LIMITS, reload_interval: float = 1.0
) -> tuple[Server, SearchService]:
    config = ServeConfig(
        bundle=str(BUNDLE), index=str(index_dir), device="cpu", limits=limits, reload_interval=reload_interval
    )
    service = SearchService.open(config)
    return Server(create_app(service)), service


@pytest.fixture(scope="module")
def server(index_dir):
    srv, _ = start(index_dir)
    yield srv
    srv.stop()


@pytest.fixture
def start_server():
    """A factory: ``start_server(index_dir, limits=, reload_interval=)`` -> (Server, SearchService); all stop
    at the end of the test."""
    started = []

    def make(index_dir: Path, limits: ServeLimits = LIMITS, reload_interval: float = 1.0):
        srv, service = start(index_dir, limits, reload_interval)
        started.append(srv)
        return srv, service

    yield make
    for srv in started:
        srv.stop()


@pytest.fixture
def make_index(retriever):
    """A factory: ``make_index(path)`` saves the 12-video test index there and returns ``path``."""
    return lambda path: build_index(retriever, path)


@pytest.fixture(scope="module")
def queries() -> np.ndarray:
    """The golden bundle's 5 query features ([5, 32] sentence features)."""
    return golden_queries()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c
