"""Progress bars for long encodes, on stderr, off by default when stderr is not a terminal.

Data goes to stdout and logs/progress to stderr, so a bar never corrupts piped output;
``show_progress=None`` means "only when a person is watching".
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["progress"]


@contextmanager
def progress(
    total: int | None, description: str, show: bool | None = None
) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``; draws a rich bar on stderr when ``show`` (``None``: when stderr is a TTY)."""
    if show is None:
        show = sys.stderr.isatty()
    if not show:
        yield lambda n=1: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=Console(stderr=True), transient=False,
    )
    with bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)
