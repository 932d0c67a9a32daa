"""One model, many callers: a worker thread that runs every forward of a local scorer.

Callers (queries running in any number of threads) hand in their pairs and wait; the worker takes
pending pairs in arrival order and runs them in batches of up to ``batch_size``. With ``cross_query``
the pairs of concurrent queries fill shared batches (a query's last, partial batch is topped up by
the next query's pairs), so concurrent queries raise throughput instead of queueing behind a lock.
Without it each query's pairs are batched alone, exactly as a query running by itself would batch
them, so scores are bit-identical to sequential scoring whatever else is running.

Only the worker thread touches the model, so per-forward state (retracing hooks, the vision cache)
never sees two forwards at once. A batch that raises (an image the processor rejects, out of memory)
is split in halves and retried down to the failing pair, which alone gets the error. A call whose
``cancel`` event is set leaves at once; its pairs not yet in a forward are dropped when their turn comes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, wait
from dataclasses import dataclass
from typing import Generic, TypeVar

from retllm.errors import Cancelled, ScoringError

log = logging.getLogger(__name__)

P = TypeVar("P")
R = TypeVar("R")


@dataclass
class _Unit(Generic[P, R]):
    """Pairs that enter a batch together; ``mergeable`` units may share a batch with other units."""

    pairs: list[P]
    futures: list[Future[R]]
    group: object
    mergeable: bool
    cancel: threading.Event | None = None

    @property
    def cancelled(self) -> bool:
        return self.cancel is not None and self.cancel.is_set()


class BatchWorker(Generic[P, R]):
    """Runs ``run_batch`` on one thread for pairs submitted from any thread.

    Args:
        run_batch: Scores a list of pairs (all of one ``group``) in one forward; returns one result per pair.
        batch_size: Most pairs per forward.
        cross_query: Let pairs from different calls share a forward.
        on_error: Called after a batch raised, before it is split (e.g. to release GPU memory).
        idle_exit_s: The thread ends after this long without work (a later call starts a new one), so an
            unused scorer holds no thread and can be garbage-collected.
    """

    def __init__(
        self,
        run_batch: Callable[[list[P]], list[R]],
        *,
        batch_size: int,
        cross_query: bool = True,
        on_error: Callable[[BaseException], None] | None = None,
        idle_exit_s: float = 2.0,
        name: str = "retllm-scorer",
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.run_batch = run_batch
        self.batch_size = batch_size
        self.cross_query = cross_query
        self.on_error = on_error
        self.idle_exit_s = idle_exit_s
        self.name = name
        self._queue: deque[_Unit[P, R]] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.batches = 0  # forwards run (splits included), for tests and benchmarks

    def run(
        self, pairs: Sequence[P], groups: Sequence[object], *, cancel: threading.Event | None = None
    ) -> list[R | BaseException]:
        """Score ``pairs`` (``groups[i]``: pairs may only share a forward within one group); blocks until done.

        Returns one result per pair, in order: the pair's result, or the exception that pair alone raised.
        Raises :class:`~retllm.errors.Cancelled` once ``cancel`` is set (checked every 50 ms).
        """
        if len(pairs) != len(groups):
            raise ValueError(f"{len(pairs)} pairs but {len(groups)} groups")
        futures: list[Future[R]] = [Future() for _ in pairs]
        units: list[_Unit[P, R]] = []
        if self.cross_query:
            units = [_Unit([p], [f], g, True, cancel) for p, f, g in zip(pairs, futures, groups, strict=True)]
        else:  # the batches a query running alone would get: per group, in order, batch_size at a time
            by_group: dict[object, list[int]] = {}
            for i, g in enumerate(groups):
                by_group.setdefault(g, []).append(i)
            for g, idx in by_group.items():
                for s in range(0, len(idx), self.batch_size):
                    chunk = idx[s : s + self.batch_size]
                    units.append(_Unit([pairs[i] for i in chunk], [futures[i] for i in chunk], g, False, cancel))
        with self._cond:
            if self._closed:
                raise ScoringError("this scorer is closed; build a new one")
            self._queue.extend(units)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
                self._thread.start()
            self._cond.notify()
        while cancel is not None and not all(f.done() for f in futures):
            wait(futures, timeout=0.05)
            Cancelled.check(cancel)  # the worker drops this call's queued pairs when it reaches them
        out: list[R | BaseException] = []
        for f in futures:
            exc = f.exception()
            out.append(exc if exc is not None else f.result())
        return out

    def _take(self) -> list[_Unit[P, R]]:
        """The next batch's units: the oldest unit, topped up with later mergeable units of its group (units of a
        cancelled call are dropped, their futures failed); empty when only cancelled units were left."""
        while self._queue and self._queue[0].cancelled:
            _drop(self._queue.popleft())
        if not self._queue:
            return []
        first = self._queue.popleft()
        units, n = [first], len(first.pairs)
        if first.mergeable:
            rest: deque[_Unit[P, R]] = deque()
            while self._queue:
                u = self._queue.popleft()
                if u.cancelled:
                    _drop(u)
                elif n < self.batch_size and u.mergeable and u.group == first.group:
                    units.append(u)
                    n += len(u.pairs)
                else:
                    rest.append(u)
            self._queue = rest
        return units

    def _loop(self) -> None:
        while True:
            with self._cond:
                deadline = time.monotonic() + self.idle_exit_s
                while not self._queue:
                    left = deadline - time.monotonic()
                    if self._closed or left <= 0:
                        self._thread = None
                        return
                    self._cond.wait(left)
                units = self._take()
            if not units:
                continue
            pairs = [p for u in units for p in u.pairs]
            futures = [f for u in units for f in u.futures]
            try:
                results = self._isolated(pairs)
            except BaseException as e:  # never leave a caller waiting
                results = [e] * len(pairs)
            for f, r in zip(futures, results, strict=True):
                if isinstance(r, BaseException):
                    f.set_exception(r)
                else:
                    f.set_result(r)

    def _isolated(self, pairs: list[P]) -> list[R | BaseException]:
        """``run_batch(pairs)``; when it raises, the halves are retried, down to the pair that fails alone."""
        try:
            self.batches += 1
            results = self.run_batch(pairs)
        except Exception as e:
            if self.on_error is not None:
                self.on_error(e)
            if len(pairs) == 1:
                return [e]
            log.info("a batch of %d pairs failed (%s: %s); retrying in halves", len(pairs), type(e).__name__, e)
            mid = len(pairs) // 2
            return [*self._isolated(pairs[:mid]), *self._isolated(pairs[mid:])]
        if len(results) != len(pairs):
            raise RuntimeError(f"run_batch returned {len(results)} results for {len(pairs)} pairs")
        return list(results)

    def close(self) -> None:
        """Finish queued work, then stop the thread; later calls raise."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()


def _drop(unit: _Unit[P, R]) -> None:
    """Fail a cancelled unit's pairs without running them."""
    for f in unit.futures:
        if not f.done():
            f.set_exception(Cancelled())
