"""Build a benchmark body that makes one call many times with little loop overhead."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

CALLS = 1000  # calls per benchmark invocation: 100 loop turns of 10 calls


def unrolled(stmt: str, **names: Any) -> Callable[[], None]:
    """A function running *stmt* CALLS times, with *names* bound as fast locals.

    Every variant pays the same loop (a hundredth of a loop turn per call), so
    ratios between variants compare the calls themselves.
    """
    params = ", ".join(f"{n}={n}" for n in names)
    body = "".join(f"            {stmt}\n" for _ in range(10))
    src = (
        f"def make({', '.join(names)}):\n"
        f"    def run({params}):\n"
        f"        for _ in range({CALLS // 10}):\n{body}"
        f"    return run\n"
    )
    namespace: dict[str, Any] = {}
    exec(src, namespace)  # the statement is ours, written in the benchmarks
    return namespace["make"](**names)
