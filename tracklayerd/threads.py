"""The GIL between the event loop and the store's threads.

SQLite work runs on threads (the group-commit writer, aiosqlite readers). It releases the GIL
inside each SQLite step but needs it back between the rows of an `executemany` and after
each step. With CPython's default switch interval of 5 ms, a thread asking for the GIL while
the event loop is busy waits up to 5 ms every time. Measured here (500 events with 5
identity rows each per transaction, next to a busy Python thread): 8,000 µs per event at
5 ms, 640 µs at 0.5 ms, 92 µs at 0.1 ms, against 47 µs with nothing else running. So the
writer's commits, and with them every acknowledgement and the processor, stalled behind
the loop. At 0.1 ms the cost is a few thousand extra switches per second, paid only while a
thread is actually waiting for the GIL.
"""

from __future__ import annotations

import sys

SWITCH_INTERVAL_SECS = 0.0001


def share_gil_with_store_threads() -> None:
    """Shorten the interpreter's switch interval. Process-wide: `serve` calls it at start."""
    sys.setswitchinterval(SWITCH_INTERVAL_SECS)
