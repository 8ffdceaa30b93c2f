"""Training checkpoints copied to object storage, so that a stage rerun on another machine
resumes where the last one stopped (a preempted or lost GPU worker).

Layout: ``<uri>/<stage>/<run fingerprint>/checkpoint-<step>/``, the files the trainer
saved plus ``ebmrl_synced.json``, written last: a checkpoint without it (an upload cut
short) is never resumed. The fingerprint (``configs.run_fingerprint``) keeps another
run's checkpoints apart, as the local folder's marker does. The record says where and
from which step the upload's trainer started (``started_at_step``: 0 when it trained
from the start, the step it resumed from otherwise: read from the trainer's own state).

Uploads run in the trainer's ``on_save`` (main process, after the checkpoint is on the
local disk and before training goes on), so a checkpoint the trainer may rotate away is
never half-read; the time each upload took is printed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

URI_ENV = "EBMRL_CHECKPOINTS_URI"
SYNCED = "ebmrl_synced.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def checkpoints_uri(configured: str | None) -> str | None:
    """``EBMRL_CHECKPOINTS_URI`` if set, else params.yaml's ``checkpoints.uri``."""
    return os.environ.get(URI_ENV) or configured or None


def checkpoint_step(path: str | Path | None) -> int:
    """The step of a ``checkpoint-N`` folder (0 for None)."""
    if path is None:
        return 0
    match = _CHECKPOINT.match(Path(path).name)
    return int(match.group(1)) if match else 0


@dataclass(frozen=True)
class CheckpointStore:
    """The synced checkpoints of one training run (one stage, one fingerprint)."""

    root: str

    @classmethod
    def for_run(cls, uri: str, stage: str, fingerprint: str) -> CheckpointStore:
        return cls(f"{uri.rstrip('/')}/{stage}/{fingerprint}")

    def _fs(self):
        import fsspec

        fs, path = fsspec.core.url_to_fs(self.root)
        return fs, path.rstrip("/")

    def synced_steps(self) -> list[int]:
        """Steps of the complete checkpoints, oldest first."""
        fs, root = self._fs()
        try:
            markers = fs.glob(f"{root}/checkpoint-*/{SYNCED}")
        except FileNotFoundError:
            return []
        steps = {checkpoint_step(Path(m).parent.name) for m in markers}
        return sorted(s for s in steps if s > 0)

    def newest_step(self) -> int:
        steps = self.synced_steps()
        return steps[-1] if steps else 0

    def record(self, step: int) -> dict[str, Any]:
        fs, root = self._fs()
        with fs.open(f"{root}/checkpoint-{step}/{SYNCED}", "r") as handle:
            return json.load(handle)

    def push(self, folder: str | Path, record: dict[str, Any]) -> float:
        """Upload ``folder`` (a ``checkpoint-N``), then its record; returns the seconds."""
        started = time.perf_counter()
        folder = Path(folder)
        fs, root = self._fs()
        target = f"{root}/{folder.name}"
        if fs.exists(target):  # a retry after a cut upload: start that step clean
            fs.rm(target, recursive=True)
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        remote = [f"{target}/{p.relative_to(folder).as_posix()}" for p in files]
        for parent in sorted({r.rsplit("/", 1)[0] for r in remote} | {target}):
            fs.makedirs(parent, exist_ok=True)  # object stores: nothing to do
        fs.put([str(p) for p in files], remote)
        with fs.open(f"{target}/{SYNCED}", "w") as handle:
            json.dump(record, handle, sort_keys=True)
        return time.perf_counter() - started

    def fetch(self, step: int, dest_dir: str | Path) -> Path:
        """Download ``checkpoint-<step>`` into ``dest_dir`` (complete, or not at all)."""
        fs, root = self._fs()
        source = f"{root}/checkpoint-{step}"
        dest = Path(dest_dir) / f"checkpoint-{step}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
        try:
            for remote in fs.find(source):
                relative = remote[len(source.rstrip("/")) + 1 :]
                if relative == SYNCED:
                    continue
                local = tmp / relative
                local.parent.mkdir(parents=True, exist_ok=True)
                fs.get_file(remote, str(local))
            shutil.rmtree(dest, ignore_errors=True)
            tmp.rename(dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return dest

    def prune(self, keep: int) -> None:
        """Remove all but the newest ``keep`` complete checkpoints (and incomplete older ones)."""
        fs, root = self._fs()
        steps = self.synced_steps()
        if len(steps) <= keep:
            return
        for step in steps[:-keep]:
            fs.rm(f"{root}/checkpoint-{step}", recursive=True)


def sync_callback(store: CheckpointStore, keep: int):
    """A ``TrainerCallback`` that uploads each checkpoint as it is saved (main process)."""
    from transformers import TrainerCallback

    class SyncCheckpoints(TrainerCallback):
        started_at_step = 0

        def on_train_begin(self, args, state, control, **kwargs):
            # On resume the trainer has loaded the checkpoint's state by now.
            self.started_at_step = state.global_step

        def on_save(self, args, state, control, **kwargs):
            if not state.is_world_process_zero:
                return
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if not folder.is_dir():
                return
            record = {
                "step": state.global_step,
                "started_at_step": self.started_at_step,
                "host": socket.gethostname(),
                "worker": os.environ.get("PREFECT__WORKER_NAME", ""),
            }
            seconds = store.push(folder, record)
            store.prune(keep)
            print(f"{folder.name} synced to {store.root} ({seconds:.1f}s)", flush=True)

    return SyncCheckpoints()
