"""Real threads for concurrency tests."""

from __future__ import annotations

import threading
from collections.abc import Callable


def run_threads(fn: Callable[[int], object], n: int) -> list[BaseException]:
    """Run ``fn(i)`` for i in 0..n-1 on ``n`` real threads released together; the exceptions they raised."""
    barrier, errors = threading.Barrier(n), []

    def body(i: int) -> None:
        try:
            barrier.wait()
            fn(i)
        except BaseException as e:  # noqa: BLE001 - collected for the caller's assertion
            errors.append(e)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors
