"""Progress of a sweep: nested bars (runs, then a run's steps) on a terminal; on a pipe or a file, one line per
finished run and nothing else."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any


def interactive() -> bool:
    return sys.stderr.isatty()


class _Null:
    def update(self, n: int = 1) -> None:
        pass


class SweepProgress:
    def __init__(self, total: int, desc: str, enabled: bool = True) -> None:
        self.bars = enabled and interactive() and total > 0
        self.outer: Any = None
        if self.bars:
            from tqdm import tqdm

            self.outer = tqdm(total=total, desc=desc, position=0)

    @contextlib.contextmanager
    def run(self, steps: int, desc: str) -> Iterator[Any]:
        """A bar over one run's training steps (a no-op without bars)."""
        if not self.bars:
            yield _Null()
            return
        from tqdm import tqdm

        self.outer.set_postfix_str(desc)
        with tqdm(total=steps, desc=desc, leave=False, position=1) as bar:
            yield bar

    def done(self, line: str) -> None:
        """A run finished: its line (above the bars on a terminal)."""
        if self.bars:
            self.outer.update(1)
            self.outer.write(line)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self.bars:
            self.outer.close()
