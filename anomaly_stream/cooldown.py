"""Leave a failing dependency alone for a while: the cool-down of the cache and the enricher."""

from __future__ import annotations

import time
from typing import Callable


class CoolDown:
    """After a failure no call is allowed for `seconds`; then calls go through again.

    With `probe=True`, once a cool-down is over a single call goes through (the
    probe) and the others wait out another cool-down, until a call succeeds.
    """

    def __init__(self, seconds: float, *, probe: bool = False, clock: Callable[[], float] = time.monotonic):
        self.seconds = seconds
        self.probe = probe
        self._clock = clock
        self._until = 0.0
        self._failing = False

    def allows(self) -> bool:
        now = self._clock()
        if now < self._until:
            return False
        if self.probe and self._failing:
            self._until = now + self.seconds  # this call is the probe; the others wait
        return True

    def failed(self) -> bool:
        """Start a cool-down; False when one was already running, so an outage can be logged once.

        That is a failing probe, or a call that was in flight when another one failed.
        """
        now = self._clock()
        first = now >= self._until
        self._until = now + self.seconds
        self._failing = True
        return first

    def succeeded(self) -> None:
        self._failing = False
        self._until = 0.0
