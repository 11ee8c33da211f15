"""The event loop and the store's threads: the GIL, and CPU priority.

SQLite work runs on threads (the group-commit writer, aiosqlite readers). It releases the GIL
inside each SQLite step but needs it back between the rows of an `executemany` and after
each step. With CPython's default switch interval of 5 ms, a thread asking for the GIL while
the event loop is busy waits up to 5 ms every time. Measured here (500 events with 5
identity rows each per transaction, next to a busy Python thread): 8,000 µs per event at
5 ms, 640 µs at 0.5 ms, 92 µs at 0.1 ms, against 47 µs with nothing else running. So the
writer's commits, and with them every acknowledgement and the processor, stalled behind
the loop. At 0.1 ms the cost is a few thousand extra switches per second, paid only while a
thread is actually waiting for the GIL.

Background threads (the WAL checkpoint) also get a lower CPU priority than the loop: the
OS shares a core between runnable threads, and a checkpoint copying the WAL took half of it
from the loop for its ~35 ms, once a second under load (the ingest p99).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading

SWITCH_INTERVAL_SECS = 0.0001


def share_gil_with_store_threads() -> None:
    """Shorten the interpreter's switch interval. Process-wide: `serve` calls it at start."""
    sys.setswitchinterval(SWITCH_INTERVAL_SECS)


# How much less CPU priority background work gets than the event loop, which must not wait
# behind it (nice values; Linux schedules each thread by its own). At +10 a busy loop keeps
# ~90 % of a shared core instead of half.
BACKGROUND_NICE = 10
MAX_NICE = 19


def lower_priority() -> None:
    """Lower the calling thread's CPU priority, where the OS allows it per thread (Linux)."""
    with contextlib.suppress(AttributeError, OSError):
        tid = threading.get_native_id()
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(MAX_NICE, current + BACKGROUND_NICE))
