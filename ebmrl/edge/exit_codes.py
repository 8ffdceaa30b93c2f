"""Exit codes of ``ebmrl`` commands, the contract with whatever schedules them.

An orchestrator (flows/, a shell loop, CI) retries a stage only when retrying can help:

- ``EXIT_INVALID`` (2): the parameters or inputs are wrong (a params validation error,
  a missing or malformed input file, an empty split). The same command fails the same
  way again: never retry.
- ``EXIT_TRANSIENT`` (75, ``EX_TEMPFAIL`` in sysexits.h): the network, a remote store or
  a server failed (connection refused or reset, timeout, HTTP 5xx after the stage's own
  retries). Running again later may succeed.
- anything else non-zero: a failure the stage did not classify (treated as permanent).

``exit_code(exc)`` is the one mapping from an exception to these codes: the CLI applies
it to whatever a stage raises, prints one ``error:`` line (no traceback) for an error it
can name, and lets anything else surface with its traceback.
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

# Set (to the stage's name) where a stage only is to be restored from DVC's run cache
# because it ran on another worker: a stage command, which would compute it here
# instead, refuses.
RESTORE_ONLY_ENV = "EBMRL_RESTORE_ONLY"

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
    # A backend still down or overloaded after its retries; the response cache could not
    # be read or written (a full disk, a flaky mount).
    "ebmrl.backends.base": ("TransientBackendError",),
    "ebmrl.backends.cache": ("CacheError",),
}


# Exception classes, by module, that mean "the inputs are wrong": a missing or malformed
# file, a bad value, nothing to work on. Their messages name the file or the key.
_INVALID_CLASSES = {
    "builtins": (
        "FileNotFoundError",
        "FileExistsError",
        "NotADirectoryError",
        "IsADirectoryError",
    ),
    "ebmrl.config": ("ConfigError",),
    "ebmrl.schema": ("SchemaError",),
    "ebmrl.frame_store": ("FrameStoreError", "MissingClipError"),
    "ebmrl.models.loading": ("ModelLoadError",),
    "ebmrl.data.synthesize": ("SynthesisError",),
    "ebmrl.eval.videoqa.formats": ("AnnotationError",),
    "ebmrl.train.training_set": ("EmptyTrainingSet",),
    # A stage asked to log to MLflow where the pipeline extra is not installed.
    "ebmrl.edge.tracking": ("TrackingUnavailable",),
}


def _classes(table: dict[str, tuple[str, ...]], module_name: str) -> tuple[type, ...]:
    module = sys.modules.get(module_name)
    if module is None:
        return ()
    return tuple(c for c in (getattr(module, n, None) for n in table[module_name]) if c)


def is_invalid_input(exc: BaseException) -> bool:
    """True for errors that name a wrong input (retrying cannot help)."""
    return any(
        isinstance(exc, classes)
        for classes in (_classes(_INVALID_CLASSES, name) for name in _INVALID_CLASSES)
        if classes
    )


def exit_code(exc: BaseException) -> int | None:
    """``EXIT_TRANSIENT`` or ``EXIT_INVALID`` for an error we can name, None otherwise.

    A wrapped network failure (e.g. a model download that timed out) is transient.
    """
    cause: BaseException | None = exc
    while cause is not None:
        if is_transient_error(cause):
            return EXIT_TRANSIENT
        cause = cause.__cause__
    return EXIT_INVALID if is_invalid_input(exc) else None


def error_line(exc: BaseException) -> str:
    """The error as one ``error: ...`` message (an OS error names its file)."""
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        text = f"{exc.strerror}: {exc.filename}"
    elif isinstance(exc, KeyError) and len(exc.args) == 1:
        text = str(exc.args[0])  # str() of a KeyError quotes its message
    else:
        text = str(exc) or type(exc).__name__
    if exit_code(exc) == EXIT_TRANSIENT:
        return f"error: transient failure, retry later: {type(exc).__name__}: {text}"
    return f"error: {text}"


def is_transient_error(exc: BaseException) -> bool:
    """True for errors of the network or of remote services (worth a later retry)."""
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    return any(
        isinstance(exc, classes)
        for classes in (_classes(_TRANSIENT_CLASSES, name) for name in _TRANSIENT_CLASSES)
        if classes
    )


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


def refused_here(command: str) -> str | None:
    """A message if ``EBMRL_RESTORE_ONLY`` forbids computing a stage in this workspace."""
    stage = os.environ.get(RESTORE_ONLY_ENV, "")
    if not stage:
        return None
    return (
        f"ebmrl {command}: not computed here ({RESTORE_ONLY_ENV}={stage}): the stage ran on "
        "another worker, and DVC's run cache on the remote has no entry for these inputs "
        "(was its `dvc push --run-cache` lost?)"
    )
