"""Progress of long operations (launch, waiting for a resync, a test run), on stderr.

On a terminal a live rich bar; otherwise (CI, a pipe, a test) one plain line per step, so
stdout keeps only the result and logs stay readable.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

Update = Callable[[str, float], None]  # (what happened, how far: 0..total)


@contextlib.contextmanager
def progress(title: str, total: float) -> Iterator[Update]:
    """A progress display for `title`; call the yielded function as steps complete."""
    console = Console(stderr=True)
    if not console.is_terminal:

        def line(text: str, done: float) -> None:
            console.print(f"{title}: {text}", highlight=False, soft_wrap=True)

        yield line
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[step]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(title, total=total, step="")

        def update(text: str, done: float) -> None:
            bar.update(task, completed=done, step=text)

        yield update
