"""How the bench scripts time a call: one definition for all of them."""

from __future__ import annotations

import timeit
from collections.abc import Callable


def best(fn: Callable[[], object], *, number: int = 1, repeat: int = 7) -> float:
    """Seconds per call of *fn*: the best of *repeat* runs of *number* calls.

    The garbage collector stays on (timeit turns it off by default): a scrape
    or a flush allocates, and pays for its collections in use too.
    """
    timer = timeit.Timer(fn, setup="gc.enable()")
    return min(timer.repeat(number=number, repeat=repeat)) / number
