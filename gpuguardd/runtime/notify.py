"""systemd notification: READY after the first good tick, WATCHDOG after each completed tick,
RELOADING/READY around a reload, STOPPING on exit. A null notifier outside systemd."""

from __future__ import annotations

import os
import time
from typing import Protocol


class Notifier(Protocol):
    def notify(self, state: str) -> None: ...


class NullNotifier:
    def notify(self, state: str) -> None:
        pass


class SystemdNotifier:
    def __init__(self) -> None:
        import sdnotify

        self._n = sdnotify.SystemdNotifier()

    def notify(self, state: str) -> None:
        if state.startswith("RELOADING=1"):
            # systemd >= 253 wants the monotonic time of the reload request for Type=notify-reload
            state = f"{state}\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"
        self._n.notify(state)


def from_environment() -> Notifier:
    return SystemdNotifier() if os.environ.get("NOTIFY_SOCKET") else NullNotifier()


def watchdog_interval_s() -> float | None:
    """Half of WATCHDOG_USEC, when systemd asks us for keep-alives."""
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec or not usec.isdigit():
        return None
    return int(usec) / 2e6
