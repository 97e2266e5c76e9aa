"""Order-keeping map over a pool of spawned worker processes that survives workers dying.

The writer decodes rows here (bnp_cxr.records.writer.write_records). Workers are spawned, not forked:
TensorFlow is not fork-safe. A spawned worker imports each function it runs by module and name, so a
function mapped here must be module-level, in a module that does not import TensorFlow; this module
imports only the standard library and bnp_cxr.console, whose initialiser keeps TensorFlow's log level quiet in
every worker (BNP_CXR_TF_LOGS=1 lifts it).
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Iterable, Iterator

from bnp_cxr.console import quiet_environment


def ordered_map(fn: Callable, items: Iterable, workers: int, max_in_flight: int | None = None,
                on_crash: Callable[[object, BaseException], object] | None = None) -> Iterator:
    """Map in `workers` processes (spawn; TensorFlow is not fork-safe; 0: in this one), in order, bounded memory.

    Without `on_crash` a worker that dies raises BrokenProcessPool. With it, the pool is recreated, the
    items in flight are retried one at a time in a fresh process, and an item that kills that process too
    yields on_crash(item, error) in its place.
    """
    if workers <= 0:
        yield from map(fn, items)
        return
    max_in_flight = max_in_flight or 4 * workers
    context = multiprocessing.get_context("spawn")
    items = iter(items)
    pending: deque[tuple[object, Future | None]] = deque()  # None: not submitted because the pool had broken
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=quiet_environment)
    try:
        while True:
            for item in items:
                try:
                    pending.append((item, pool.submit(fn, item)))
                except BrokenProcessPool:
                    pending.append((item, None))
                if len(pending) >= max_in_flight:
                    break
            if not pending:
                return
            future = pending[0][1]
            try:
                if future is None:
                    raise BrokenProcessPool("the worker pool broke before this item was submitted")
                result = future.result()
            except BrokenProcessPool:
                if on_crash is None:
                    raise
                pool.shutdown(wait=True, cancel_futures=True)
                yield from _isolate(fn, list(pending), context, on_crash)
                pending.clear()
                pool = ProcessPoolExecutor(workers, mp_context=context, initializer=quiet_environment)
                continue
            pending.popleft()
            yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _isolate(fn: Callable, entries: list[tuple[object, Future | None]], context, on_crash: Callable) -> Iterator:
    """Results of items in flight when a worker died: finished ones as they are, the rest retried one by one."""
    solo = None
    try:
        for item, future in entries:
            if future is not None and future.done() and not future.cancelled() and future.exception() is None:
                yield future.result()
                continue
            solo = solo or ProcessPoolExecutor(1, mp_context=context, initializer=quiet_environment)
            try:
                result = solo.submit(fn, item).result()
            except BrokenProcessPool as error:
                solo.shutdown(wait=True)
                solo = None  # the next suspect gets a fresh process
                result = on_crash(item, error)
            yield result
    finally:
        if solo is not None:
            solo.shutdown(wait=True)
