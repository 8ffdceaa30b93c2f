"""An append-only, crash-safe store of finished generations (JSON lines), keyed by hash.

Each finished result is appended as one JSON line with a single ``write`` on a file opened
with ``O_APPEND`` and then ``fsync``-ed, so a crash or ``kill -9`` loses at most the
results still in flight: every line already written is complete and durable. A line cut
short by a crash in the middle of a write (power loss, full disk) is the last one; it is
dropped (and trimmed from the file) when the store is next opened. A key written twice
(two runs racing) keeps its first value, so readers never see duplicates.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class CacheError(RuntimeError):
    """The store file cannot be read or written; the message names the file."""


class ResponseCache:
    def __init__(self, path: str | Path, *, fsync: bool = True):
        self.path = Path(path)
        self.fsync = fsync
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, Any]] = {}
        self.dropped_torn_lines = 0
        self.skipped_corrupt_lines = 0
        self.duplicate_lines = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._load()
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise CacheError(f"{self.path}: cannot open for appending: {exc}") from None

    # ------------------------------------------------------------------ reading
    def _load(self) -> None:
        if not self.path.exists():
            return
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise CacheError(f"{self.path}: cannot read: {exc}") from None
        complete_end = data.rfind(b"\n") + 1
        if complete_end < len(data):
            # A line without its newline was being written when the process died.
            self.dropped_torn_lines += 1
            with open(self.path, "r+b") as handle:
                handle.truncate(complete_end)
        for line in data[:complete_end].splitlines():
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                key = entry["key"]
            except (ValueError, KeyError, TypeError):
                self.skipped_corrupt_lines += 1
                continue
            if key in self._entries:
                self.duplicate_lines += 1
                continue
            self._entries[key] = entry

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> dict[str, Any] | None:
        return self._entries.get(key)

    def keys(self) -> Iterator[str]:
        return iter(list(self._entries))

    # ------------------------------------------------------------------ writing
    def put(self, key: str, **fields: Any) -> dict[str, Any]:
        """Append ``{"key": key, **fields}`` durably; a key already present is kept as is."""
        entry = {"key": key, **fields}
        line = (json.dumps(entry, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")
        with self._lock:
            if key in self._entries:
                return self._entries[key]
            view = memoryview(line)
            try:
                while view:
                    written = os.write(self._fd, view)
                    view = view[written:]
                if self.fsync:
                    os.fsync(self._fd)
            except OSError as exc:
                raise CacheError(f"{self.path}: cannot append: {exc}") from None
            self._entries[key] = entry
        return entry

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> ResponseCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
