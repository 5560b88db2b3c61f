"""Progress reporting and cancellation for long steps.

A long step takes ``progress``: a callable ``progress(fraction, message)`` with ``fraction`` in [0, 1].
It may raise :class:`~LuDosimetryLib.errors.CancelledError` to cancel; :class:`Progress` wraps a callback
and a cancel flag so that sub-steps can report into a slice of the overall range.
"""
from __future__ import annotations

import threading
from typing import Callable, Optional

from .errors import CancelledError

ProgressCallback = Callable[[float, str], None]


class Progress:
    """Reports fractions of a step into ``[start, stop]`` of a parent callback and checks for cancel.

    Parameters
    ----------
    callback : callable, optional
        ``callback(fraction, message)``; ``None`` reports nothing.
    cancel_event : threading.Event, optional
        When set, the next :meth:`report` raises :class:`CancelledError`.
    start, stop : float
        The slice of the parent's range this object reports into.
    """

    def __init__(self, callback: Optional[ProgressCallback] = None,
                 cancel_event: Optional[threading.Event] = None,
                 start: float = 0.0, stop: float = 1.0):
        self.callback = callback
        self.cancel_event = cancel_event if cancel_event is not None else threading.Event()
        self.start = float(start)
        self.stop = float(stop)

    def report(self, fraction: float, message: str = "") -> None:
        """Report ``fraction`` (0–1) of this step; raise :class:`CancelledError` if cancel was asked."""
        if self.cancel_event.is_set():
            raise CancelledError()
        if self.callback is not None:
            f = min(max(float(fraction), 0.0), 1.0)
            self.callback(self.start + f * (self.stop - self.start), message)

    __call__ = report

    def sub(self, start: float, stop: float) -> "Progress":
        """A child that reports into ``[start, stop]`` (fractions of this step)."""
        span = self.stop - self.start
        return Progress(self.callback, self.cancel_event,
                        self.start + start * span, self.start + stop * span)

    def cancel(self) -> None:
        """Ask the running step to stop at its next report."""
        self.cancel_event.set()


def as_progress(progress) -> Progress:
    """Accept ``None``, a plain callback or a :class:`Progress`; return a :class:`Progress`."""
    if isinstance(progress, Progress):
        return progress
    return Progress(progress)
