"""Small file-system helpers shared by the stages: atomic writes and JSON I/O.

JSON is parsed in one place: a malformed file raises the caller's error class with the
file and the line named (a missing file stays a ``FileNotFoundError``)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | Path, *, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; on success rename it onto ``path``.

    A crash (or an exception) leaves the previous ``path`` untouched and removes the
    temporary, so readers never see half-written outputs.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        # mkstemp/mkdtemp create owner-only entries; give outputs the usual permissions.
        tmp.chmod((0o777 if is_dir else 0o666) & ~_umask())
        if is_dir:
            if path.exists():
                old = path.with_name(f".{path.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                path.rename(old)
                tmp.rename(path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(path)
        else:
            os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def parse_json(text: str, origin: str, error: type[Exception] = ValueError) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{origin}: invalid JSON at line {exc.lineno}: {exc.msg}") from None


def parse_json_lines(text: str, origin: str, error: type[Exception] = ValueError) -> list[Any]:
    """One JSON value per non-blank line (JSON Lines)."""
    values = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                values.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise error(f"{origin}: invalid JSON on line {number}: {exc.msg}") from None
    return values


def read_json(path: str | Path, error: type[Exception] = ValueError) -> Any:
    path = Path(path)
    return parse_json(path.read_text(encoding="utf-8"), str(path), error)
