"""Stop requests during training: SIGTERM or a first Ctrl-C finish the step and checkpoint; a second Ctrl-C
stops at once (KeyboardInterrupt). Signal handlers can only be installed from the main thread; elsewhere
(a notebook's worker thread) this does nothing and Ctrl-C is the kernel's.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

__all__ = ["StopSignals"]


class StopSignals:
    """`with StopSignals() as s:` ... `s.requested` is None, "SIGTERM" or "SIGINT"."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.getsignal(sig)
                signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        self.requested = signal.Signals(signum).name

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
