"""Which model is this? A content hash of a local model folder (a hub id is its own name).

Copies of the same weights (a ``dvc checkout``, a ``dvc pull`` on a fresh worker, a
``cp -r``) get the same identity; other weights at the same path get another. Hashing a
15 GB model takes a while, so each file's digest is cached by its size, modification
time and inode in ``file_digests.json`` under the user cache folder (``EBMRL_CACHE_DIR``,
else ``$XDG_CACHE_HOME/ebmrl``, else ``~/.cache/ebmrl``): a file is read again only when
one of those changes, e.g. once after a checkout.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

CACHE_ENV = "EBMRL_CACHE_DIR"
CACHE_FILE = "file_digests.json"
_CHUNK = 1 << 24
_lock = threading.Lock()


def cache_path() -> Path:
    root = os.environ.get(CACHE_ENV)
    if root:
        return Path(root) / CACHE_FILE
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "ebmrl" / CACHE_FILE


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(path: Path, entries: dict[str, Any]) -> None:
    """Best effort: a read-only or racing cache only costs a rehash next time."""
    from ebmrl.io import write_json

    with contextlib.suppress(OSError):
        # Merge with what another process may have written meanwhile.
        write_json(path, {**_read_cache(path), **entries})


def hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_digests(files: list[Path]) -> dict[Path, str]:
    """sha256 of each file, from the cache when its size, mtime and inode are unchanged."""
    where = cache_path()
    with _lock:
        cache = _read_cache(where)
        fresh: dict[str, Any] = {}
        out = {}
        for file in files:
            status = file.stat()
            key = str(file.resolve())
            stamp = [status.st_size, status.st_mtime_ns, status.st_ino]
            entry = cache.get(key)
            if isinstance(entry, dict) and entry.get("stat") == stamp:
                out[file] = entry["sha256"]
                continue
            out[file] = hash_file(file)
            fresh[key] = {"stat": stamp, "sha256": out[file]}
        if fresh:
            _write_cache(where, fresh)
    return out


def folder_digest(folder: str | Path) -> str:
    """One sha256 over every file of ``folder`` (relative names and contents)."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    digests = file_digests(files)
    combined = hashlib.sha256()
    for file in files:
        combined.update(file.relative_to(folder).as_posix().encode("utf-8") + b"\0")
        combined.update(digests[file].encode("ascii"))
    return combined.hexdigest()


def model_identity(id_or_path: str | Path) -> dict[str, str]:
    """``{"sha256": ...}`` of a local model folder's content; ``{"id": ...}`` for a hub id."""
    path = Path(id_or_path)
    if not path.is_dir():
        return {"id": str(id_or_path)}
    return {"sha256": folder_digest(path)}


def model_fingerprint(id_or_path: str | Path) -> str:
    """``name@hash`` for a local folder (its content), so retrained weights at the same
    path do not hit a stale cache; hub ids as is."""
    identity = model_identity(id_or_path)
    if "id" in identity:
        return identity["id"]
    return f"{id_or_path}@{identity['sha256'][:12]}"
