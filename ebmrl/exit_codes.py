"""Exit codes of ``ebmrl`` commands, the contract with whatever schedules them.

An orchestrator (flows/, a shell loop, CI) retries a stage only when retrying can help:

- ``EXIT_INVALID`` (2): the parameters or inputs are wrong (a params validation error,
  a missing input). The same command fails the same way again: never retry.
- ``EXIT_TRANSIENT`` (75, ``EX_TEMPFAIL`` in sysexits.h): the network, a remote store or
  a server failed (connection refused or reset, timeout, HTTP 5xx after the stage's own
  retries). Running again later may succeed.
- anything else non-zero: a failure the stage did not classify (treated as permanent).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

EXIT_OK = 0
EXIT_INVALID = 2
EXIT_TRANSIENT = 75

# Fault injection for tests of retries: "<command>:<marker file>" makes that command exit
# with EXIT_TRANSIENT once (it creates the marker; while the marker exists it runs normally).
FAULT_ONCE_ENV = "EBMRL_FAULT_ONCE"

# Exception classes, by module, that mean "the network or a remote service failed".
# Looked up only in modules already imported: this module imports nothing heavy.
_TRANSIENT_CLASSES = {
    "botocore.exceptions": (
        "EndpointConnectionError",
        "ConnectTimeoutError",
        "ReadTimeoutError",
        "ConnectionClosedError",
    ),
    "httpx": ("TransportError",),
    "aiohttp": ("ClientConnectionError", "ServerTimeoutError"),
    "requests.exceptions": ("ConnectionError", "Timeout"),
    "urllib3.exceptions": ("ProtocolError", "NewConnectionError", "TimeoutError"),
}


def is_transient_error(exc: BaseException) -> bool:
    """True for errors of the network or of remote services (worth a later retry)."""
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    for module_name, class_names in _TRANSIENT_CLASSES.items():
        module = sys.modules.get(module_name)
        if module is None:
            continue
        classes = tuple(c for c in (getattr(module, n, None) for n in class_names) if c)
        if classes and isinstance(exc, classes):
            return True
    return False


def injected_fault(command: str) -> str | None:
    """A message if ``EBMRL_FAULT_ONCE`` asks this command to fail (transiently) now."""
    spec = os.environ.get(FAULT_ONCE_ENV, "")
    target, sep, marker = spec.partition(":")
    if not sep or target != command or not marker:
        return None
    marker_path = Path(marker)
    if marker_path.exists():
        return None
    marker_path.parent.mkdir(parents=True, exist_ok=True)
    marker_path.write_text("injected\n", encoding="utf-8")
    return f"injected transient fault ({FAULT_ONCE_ENV}={spec}); the next attempt runs"
