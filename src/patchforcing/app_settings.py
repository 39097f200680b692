"""Settings of the interactive page (``patchforcing app``) that need no Gradio, so that ``app --help``
can state them: where the page listens, and what it keeps of its browser sessions."""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass

from patchforcing.errors import ConfigError

HOST = "127.0.0.1"  # loopback: only this machine reaches the page unless --host says otherwise
PORT = 7860  # Gradio's usual port


@dataclass(frozen=True)
class SessionLimits:
    """What the page keeps for its browser sessions: at most ``sessions * frame_bytes`` bytes of frames.

    Attributes:
        sessions: sessions kept (Gradio's ``state_session_capacity``); the least recently used is dropped.
        frame_bytes: the frames of one session (its tabs together), as uint8 tiles at the network's
            resolution; a longer run keeps evenly spaced frames (the first and the result always).
        minutes: a session's frames are dropped this long after its last Generate (Gradio's state time-out).
    """

    sessions: int = 16
    frame_bytes: int = 32 * 2**20
    minutes: float = 30.0

    def __post_init__(self) -> None:
        whole = all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in (self.sessions, self.frame_bytes))
        if not whole or not isinstance(self.minutes, (int, float)) or not (math.isfinite(self.minutes) and self.minutes > 0):
            raise ConfigError(f"the page's session limits need at least 1 session (--max-sessions), at least 1 byte of frames "
                              f"and more than 0 minutes (--session-minutes), got {self.sessions}, {self.frame_bytes} and {self.minutes}")

    @property
    def total_bytes(self) -> int:
        return self.sessions * self.frame_bytes

    def describe(self) -> str:
        """``the frames of at most 16 sessions, 32 MiB each ...``: the bound, in words."""
        return (f"the frames of at most {self.sessions} sessions, {mib(self.frame_bytes)} each as uint8 tiles (at most "
                f"{mib(self.total_bytes)} in all), each dropped {self.minutes:g} minutes after its last Generate")


def mib(n: int) -> str:
    """``32 MiB``, ``19.5 KiB`` or ``200 bytes``."""
    for unit, size in (("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} bytes"


def is_loopback(host: str) -> bool:
    """Whether ``host`` reaches this machine only (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_port(port: int) -> int:
    """``port`` if it is one a server can listen on (1 to 65535), else a ``ConfigError`` naming the range."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ConfigError(f"--port must be a whole number from 1 to 65535, got {port!r}")
    return port
