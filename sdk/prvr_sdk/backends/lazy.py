"""A session that loads its graph on first use.

Creating an ONNX Runtime session parses and optimises the whole graph (the MiniLM text backbone alone takes
~0.1 s); a ``prvr search`` never runs the video encoder and ``prvr index build`` with precomputed features
never runs the text graphs, so the Retriever opens each graph only when something first asks for it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from prvr_sdk.backends.base import Session

__all__ = ["LazySession"]


class LazySession:
    """``Session`` whose graph is opened by ``opener`` the first time any attribute or ``run`` is used.

    Errors from opening (corrupt graph, missing provider) surface at that first use, unchanged. Thread-safe:
    concurrent first uses open the graph once.
    """

    def __init__(self, opener: Callable[[], Session], name: str = "") -> None:
        self._opener = opener
        self._name = name
        self._session: Session | None = None
        self._lock = threading.Lock()

    @property
    def opened(self) -> bool:
        """Whether the graph has been loaded (``prvr doctor`` and ``repr`` do not force it)."""
        return self._session is not None

    def get(self) -> Session:
        """The real session, opened now if it was not yet."""
        if self._session is None:
            with self._lock:
                if self._session is None:
                    self._session = self._opener()
        return self._session

    def run(
        self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        return self.get().run(feeds, outputs)

    def __getattr__(self, attr: str):  # input_names, output_names, backend, device, provider, ...
        if attr.startswith("_"):
            raise AttributeError(attr)
        return getattr(self.get(), attr)

    def __repr__(self) -> str:
        state = repr(self._session) if self._session is not None else "not opened yet"
        return f"LazySession({self._name or 'graph'}: {state})"
