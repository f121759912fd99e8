"""Loaded (through PYTHONPATH) only by ``make check-future``, which runs Python under Debian's faketime.

The guard moves the wall clock a year ahead and leaves the monotonic clocks real (``--exclude-monotonic``,
which sets ``FAKETIME_DONT_FAKE_MONOTONIC=1``): with a faked monotonic clock, Python's timed lock waits
(``sem_clockwait``, which libfaketime does not intercept) sleep for the year. But libfaketime 0.9.10,
Debian 12's, mistranslates ``clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME)`` when the monotonic
clock is not faked, and Python >= 3.11's ``time.sleep`` fails with EINVAL (wolfcw/libfaketime#426 and
#390, read 2026-12-06). So, under faketime only, ``time.sleep`` waits in ``select`` instead.
"""

from __future__ import annotations

import os
import select
import time


def _sleep(seconds: float) -> None:
    if seconds < 0:
        raise ValueError("sleep length must be non-negative")
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        select.select([], [], [], left)


if "faketime" in os.environ.get("LD_PRELOAD", "") and os.environ.get("FAKETIME_DONT_FAKE_MONOTONIC") == "1":
    time.sleep = _sleep
