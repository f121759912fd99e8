"""A provider's upstream slots, shared fairly: no caller holds more than half, and waiting has its own budget.

One caller (by ``oid``) may hold at most ``ceil(capacity / 2)`` slots, and at least one, so a
caller that fills its share with slow requests leaves the rest to others. A request that cannot
get a slot within ``wait_s`` is refused with 503 ``proxy_busy`` (:class:`ProxyBusy`), which ADF
retries by its policy; the wait never counts against the upstream timeout.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Callable

from broker.config import Setting
from broker.errors import ProxyBusy

# How soon a refused caller should come back: about one slot-wait budget's worth of work drains by then.
BUSY_RETRY_AFTER_S = 5.0


class Slots:
    """At most ``capacity`` held at once, at most ``share`` of them by one caller."""

    def __init__(
        self,
        capacity: int,
        *,
        wait_s: float,
        describe: Callable[[], str],
        on_wait: Callable[[bool], None] | None = None,
    ) -> None:
        self.capacity = capacity
        self.share = max(1, math.ceil(capacity / 2))
        self._wait_s = wait_s
        self._describe = describe
        self._on_wait = on_wait
        self._held: Counter[str] = Counter()
        self._total = 0
        self._changed = asyncio.Condition()

    def _free_for(self, caller: str) -> bool:
        return self._total < self.capacity and self._held[caller] < self.share

    async def acquire(self, caller: str) -> Slot:
        """A slot for ``caller``; raises :class:`ProxyBusy` after waiting ``wait_s`` in vain."""
        async with self._changed:
            if not self._free_for(caller):
                try:
                    async with asyncio.timeout(self._wait_s):
                        await self._changed.wait_for(lambda: self._free_for(caller))
                except TimeoutError:
                    if self._on_wait is not None:
                        self._on_wait(True)
                    raise ProxyBusy(
                        f"All upstream slots this caller may use are taken ({self._describe()}; one caller holds at "
                        f"most {self.share} of {self.capacity}); none came free within "
                        f"{Setting.PROXY_SLOT_WAIT_SECONDS}={self._wait_s:g}. Retry after the Retry-After delay.",
                        retry_after=BUSY_RETRY_AFTER_S,
                    ) from None
                if self._on_wait is not None:
                    self._on_wait(False)
            self._held[caller] += 1
            self._total += 1
        return Slot(self, caller)

    async def _release(self, caller: str) -> None:
        async with self._changed:
            self._held[caller] -= 1
            if self._held[caller] <= 0:
                del self._held[caller]
            self._total -= 1
            self._changed.notify_all()


class Slot:
    """One held slot; :meth:`release` is idempotent."""

    def __init__(self, slots: Slots, caller: str) -> None:
        self._slots = slots
        self._caller = caller
        self._held = True

    async def release(self) -> None:
        if self._held:
            self._held = False
            await self._slots._release(self._caller)
