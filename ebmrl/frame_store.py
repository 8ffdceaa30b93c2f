"""Where sampled frames and their CLIP embeddings live, computed once per clip.

The ``frames`` stage fills a store; the CLIP reward, the PCG reward, the trainers and the
evaluation read it. Readers only need the small ``FrameStore`` protocol, so tests can use
``MemoryFrameStore`` and production the on-disk store through the same code.

A clip missing from the store is an error that names the clip (``MissingClipError``):
it means the frames stage did not run for it, and scoring it as 0 would silently bias
training.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


class MissingClipError(KeyError):
    """The store has no entry for this clip (did the frames stage run for it?)."""

    def __init__(self, clip_id: str, what: str = "frames"):
        self.clip_id = clip_id
        self.what = what
        super().__init__(clip_id)

    def __str__(self) -> str:
        return (
            f"no {self.what} for clip {self.clip_id!r} in the frame store "
            "(did the frames stage run for this clip?)"
        )


@runtime_checkable
class FrameStore(Protocol):
    def clip_ids(self) -> list[str]:
        """Every clip the store holds."""
        ...

    def frames(self, clip_id: str) -> np.ndarray:
        """The policy's frames of the clip (what the VLM sees), ``(T, H, W, 3)`` uint8."""
        ...

    def embeddings(self, clip_id: str) -> np.ndarray:
        """CLIP image embeddings of the clip's CLIP frames (sampled for CLIP, not
        necessarily the policy's frames), ``(T_clip, D)`` float32, L2-normalised."""
        ...


class MemoryFrameStore:
    """A dict-backed store (tests, small jobs). Embeddings are normalised on insert."""

    def __init__(self) -> None:
        self._frames: dict[str, np.ndarray] = {}
        self._embeddings: dict[str, np.ndarray] = {}

    def add(
        self, clip_id: str, frames: np.ndarray | None = None, embeddings: np.ndarray | None = None
    ) -> None:
        if frames is not None:
            self._frames[clip_id] = np.asarray(frames)
        if embeddings is not None:
            self._embeddings[clip_id] = l2_normalise(np.asarray(embeddings, dtype=np.float32))

    def clip_ids(self) -> list[str]:
        return sorted(set(self._frames) | set(self._embeddings))

    def frames(self, clip_id: str) -> np.ndarray:
        try:
            return self._frames[clip_id]
        except KeyError:
            raise MissingClipError(clip_id, "frames") from None

    def embeddings(self, clip_id: str) -> np.ndarray:
        try:
            return self._embeddings[clip_id]
        except KeyError:
            raise MissingClipError(clip_id, "frame embeddings") from None


def l2_normalise(x: np.ndarray, axis: int = -1) -> np.ndarray:
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def require_clips(store: FrameStore, clip_ids: Iterable[str]) -> None:
    """Fail fast, naming every missing clip, before a long job starts."""
    have = set(store.clip_ids())
    missing = sorted({c for c in clip_ids if c not in have})
    if missing:
        shown = ", ".join(missing[:10]) + (
            f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        )
        raise MissingClipError(shown, f"entries ({len(missing)} clips)")


# ------------------------------------------------------------------ on-disk, sharded
# Written by the frames stage, read by everything downstream. Layout of a store folder:
#
#   index.json              the commit point: settings, and per clip its shard, content
#                           hash, the policy frames' indices and timestamps (seconds), and
#                           the indices of the frames CLIP embedded (clip_indices)
#   shards/shard-NNNNN.npz  many clips per file (DVC slows down on many small files):
#                           members frames/<clip_id> (T,H,W,3) uint8 (the policy's),
#                           embeddings/<clip_id> (T_clip,D) float32, and meta (JSON)
#
# Each shard is written atomically and describes itself (meta), so a run that dies
# keeps its finished shards and the next run reuses them; index.json is written last.

# /2: the embeddings are of CLIP's own frames (clip_indices), not of the stored frames.
STORE_FORMAT = "ebmrl-frames/2"
INDEX_NAME = "index.json"
SHARDS_DIR = "shards"


class FrameStoreError(RuntimeError):
    """The store folder is missing or unreadable; the message names the path."""


def _read_shard_meta(path) -> dict:
    import json

    with np.load(path, allow_pickle=False) as npz:
        return json.loads(bytes(npz["meta"]).decode("utf-8"))


class ShardedFrameStore:
    """Read side of the on-disk store (``ShardedFrameStore.open(folder)``).

    Embeddings are small and read often (every reward batch): they are kept in memory
    after the first read. Frames are decompressed from their shard on each call. Safe to
    share between threads and to pickle (open files are not carried along).
    """

    def __init__(self, root, index: dict):
        import threading
        from pathlib import Path

        self.root = Path(root)
        self._index = index
        self._clips: dict[str, dict] = index["clips"]
        self._open: dict[str, object] = {}
        self._embeddings: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    @classmethod
    def open(cls, root) -> ShardedFrameStore:
        import json
        from pathlib import Path

        root = Path(root)
        index_path = root / INDEX_NAME
        if not index_path.is_file():
            raise FrameStoreError(
                f"no frame store at {root} (missing {INDEX_NAME}: did the frames stage run?)"
            )
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise FrameStoreError(f"{index_path}: unreadable: {exc}") from None
        if index.get("format") != STORE_FORMAT:
            raise FrameStoreError(
                f"{index_path}: format {index.get('format')!r}, expected {STORE_FORMAT!r}"
            )
        return cls(root, index)

    # pickling (e.g. DataLoader workers): reopen shards lazily on the other side
    def __getstate__(self) -> dict:
        return {"root": str(self.root), "index": self._index}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["root"], state["index"])

    @property
    def settings(self) -> dict:
        """How the frames were made: schedule, size budget, CLIP model (and its hash)."""
        return dict(self._index.get("settings", {}))

    def clip_ids(self) -> list[str]:
        return sorted(self._clips)

    def info(self, clip_id: str) -> dict:
        try:
            return dict(self._clips[clip_id])
        except KeyError:
            raise MissingClipError(clip_id, "frames") from None

    def frame_indices(self, clip_id: str) -> list[int]:
        return list(self.info(clip_id)["indices"])

    def timestamps(self, clip_id: str) -> list[float]:
        """Seconds from the start of the clip of each stored frame."""
        return list(self.info(clip_id)["timestamps"])

    def clip_frame_indices(self, clip_id: str) -> list[int]:
        """Indices of the frames whose CLIP embeddings are stored."""
        info = self.info(clip_id)
        return list(info.get("clip_indices", info["indices"]))

    def _member(self, clip_id: str, kind: str, what: str) -> np.ndarray:
        entry = self._clips.get(clip_id)
        if entry is None:
            raise MissingClipError(clip_id, what)
        with self._lock:
            npz = self._open.get(entry["shard"])
            if npz is None:
                path = self.root / SHARDS_DIR / entry["shard"]
                try:
                    npz = np.load(path, allow_pickle=False)
                except OSError as exc:
                    raise FrameStoreError(
                        f"{path}: cannot open shard of clip {clip_id!r}: {exc}"
                    ) from None
                self._open[entry["shard"]] = npz
            return npz[f"{kind}/{clip_id}"]

    def frames(self, clip_id: str) -> np.ndarray:
        return self._member(clip_id, "frames", "frames")

    def embeddings(self, clip_id: str) -> np.ndarray:
        cached = self._embeddings.get(clip_id)
        if cached is None:
            cached = self._member(clip_id, "embeddings", "frame embeddings")
            self._embeddings[clip_id] = cached
        return cached

    def close(self) -> None:
        with self._lock:
            for npz in self._open.values():
                npz.close()
            self._open.clear()

    def __enter__(self) -> ShardedFrameStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class ShardMember:
    """One array of a shard as stored: its ``.npy`` bytes, deflated (zip method 8) or
    stored (method 0), with the CRC-32 and size of the uncompressed bytes."""

    name: str
    data: bytes
    crc: int
    size: int
    method: int


@dataclass(frozen=True)
class ClipPayload:
    """A clip's shard members (frames, embeddings) and index entry, ready to write."""

    clip_id: str
    members: tuple[ShardMember, ...]
    entry: dict
    nbytes: int  # frames + embeddings uncompressed: what ``shard_size_bytes`` counts


def npy_member(name: str, array: np.ndarray, *, compress: bool) -> ShardMember:
    """``array`` serialised as ``name.npy`` (what ``np.savez_compressed`` stores)."""
    import io
    import zlib

    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.asanyarray(array), allow_pickle=False)
    raw = buffer.getvalue()
    if compress:
        deflate = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
        data, method = deflate.compress(raw) + deflate.flush(), 8
    else:
        data, method = raw, 0
    return ShardMember(f"{name}.npy", data, zlib.crc32(raw), len(raw), method)


def clip_payload(
    clip_id: str, frames: np.ndarray, embeddings: np.ndarray, entry: dict, *, compress: bool
) -> ClipPayload:
    """Check, normalise and serialise one clip for a shard. Pure (no I/O), so the frames
    stage runs it in its workers and the writer only concatenates bytes."""
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    embeddings = l2_normalise(np.asarray(embeddings, dtype=np.float32))
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"clip {clip_id!r}: frames must be (T, H, W, 3), got {frames.shape}")
    if "clip_indices" in entry:
        expected, what = len(entry["clip_indices"]), "CLIP frames"
    else:
        expected, what = frames.shape[0], "frames"
    if embeddings.ndim != 2 or embeddings.shape[0] != expected:
        raise ValueError(
            f"clip {clip_id!r}: {embeddings.shape[0]} embeddings for {expected} {what}"
        )
    members = (
        npy_member(f"frames/{clip_id}", frames, compress=compress),
        npy_member(f"embeddings/{clip_id}", embeddings, compress=compress),
    )
    return ClipPayload(clip_id, members, dict(entry), frames.nbytes + embeddings.nbytes)


def write_npz(handle, members: Iterable[ShardMember]) -> None:
    """Write ``members`` as a zip file that ``np.load`` reads (zip64 records throughout, as
    ``np.savez`` forces them; a fixed 1980-01-01 timestamp, so a shard's bytes depend only
    on its content). Members arrive already deflated: compressing is per-clip work."""
    import struct

    dos_time, dos_date, unix_file = 0, (0 << 9) | (1 << 5) | 1, 0o100644 << 16
    offset, records = 0, []
    for member in members:
        name = member.name.encode("utf-8")
        extra = struct.pack("<HHQQ", 1, 16, member.size, len(member.data))
        header = struct.pack(
            "<4s2B4HL2L2H", b"PK\x03\x04", 45, 0, 0, member.method, dos_time, dos_date,
            member.crc, 0xFFFFFFFF, 0xFFFFFFFF, len(name), len(extra),
        )  # fmt: skip
        handle.write(header + name + extra)
        handle.write(member.data)
        start, offset = offset, offset + len(header) + len(name) + len(extra) + len(member.data)
        extra = struct.pack("<HHQQQ", 1, 24, member.size, len(member.data), start)
        records.append(struct.pack(
            "<4s4B4HL2L5H2L", b"PK\x01\x02", 45, 3, 45, 0, 0, member.method, dos_time,
            dos_date, member.crc, 0xFFFFFFFF, 0xFFFFFFFF, len(name), len(extra), 0, 0, 0,
            unix_file, 0xFFFFFFFF,
        ) + name + extra)  # fmt: skip
    directory, count = b"".join(records), len(records)
    handle.write(directory)
    end64 = offset + len(directory)
    handle.write(
        struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count,
                    len(directory), offset)
    )  # fmt: skip
    handle.write(struct.pack("<4sLQL", b"PK\x06\x07", 0, end64, 1))
    small = min(count, 0xFFFF)
    handle.write(
        struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, small, small, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    )


class ShardWriter:
    """Write side: buffer clips, write a shard when ``shard_size_bytes`` is reached, and
    commit ``index.json`` in ``finish``. Shards of an earlier run with the same
    ``settings`` are reused (``has``), so an interrupted run resumes where it stopped.
    """

    def __init__(
        self, root, settings: dict, *, shard_size_bytes: int = 64 << 20, compress: bool = True
    ):
        import hashlib
        import json
        from pathlib import Path

        self.root = Path(root)
        self.shards = self.root / SHARDS_DIR
        self.shards.mkdir(parents=True, exist_ok=True)
        self.settings = settings
        self.key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
        self.shard_size_bytes = shard_size_bytes
        self.compress = compress
        self._entries: dict[str, dict] = {}  # clip_id -> index entry (with "shard")
        self._buffer: list[ClipPayload] = []
        self._buffered_bytes = 0
        self.reused = 0
        self.written_shards = 0
        numbers = [-1]
        for path in sorted(self.shards.glob("shard-*.npz")):
            numbers.append(int(path.stem.split("-")[1]))
            try:
                meta = _read_shard_meta(path)
            except Exception:  # unreadable leftovers are replaced, never trusted
                continue
            if meta.get("settings_key") != self.key:
                continue
            for clip_id, entry in meta["clips"].items():
                self._entries.setdefault(clip_id, {**entry, "shard": path.name})
        self._next = max(numbers) + 1

    def has(self, clip_id: str, sha256: str | None = None) -> bool:
        entry = self._entries.get(clip_id)
        return entry is not None and (sha256 is None or entry.get("sha256") == sha256)

    def add(self, clip_id: str, frames: np.ndarray, embeddings: np.ndarray, entry: dict) -> None:
        self.add_payload(clip_payload(clip_id, frames, embeddings, entry, compress=self.compress))

    def add_payload(self, payload: ClipPayload) -> None:
        """Buffer a clip already serialised (``clip_payload``, e.g. in a frames worker)."""
        self._buffer.append(payload)
        self._buffered_bytes += payload.nbytes
        if self._buffered_bytes >= self.shard_size_bytes:
            self.flush()

    def flush(self) -> None:
        """Write the buffered clips as one shard (atomically)."""
        import json

        from ebmrl.io import atomic_path

        if not self._buffer:
            return
        name = f"shard-{self._next:05d}.npz"
        self._next += 1
        members: list[ShardMember] = []
        meta: dict = {"settings_key": self.key, "clips": {}}
        for payload in self._buffer:
            members += payload.members
            meta["clips"][payload.clip_id] = payload.entry
        encoded = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
        members.append(npy_member("meta", encoded, compress=self.compress))
        with atomic_path(self.shards / name) as tmp, open(tmp, "wb") as handle:
            write_npz(handle, members)
        for clip_id, entry in meta["clips"].items():
            self._entries[clip_id] = {**entry, "shard": name}
        self._buffer.clear()
        self._buffered_bytes = 0
        self.written_shards += 1

    def finish(self, clip_ids) -> dict:
        """Flush, write ``index.json`` listing exactly ``clip_ids``, delete unused shards."""
        from ebmrl.io import write_json

        self.flush()
        wanted = sorted(set(clip_ids))
        missing = [c for c in wanted if c not in self._entries]
        if missing:
            raise MissingClipError(", ".join(missing[:10]), "frames to index")
        clips = {c: self._entries[c] for c in wanted}
        index = {
            "format": STORE_FORMAT,
            "settings": self.settings,
            "settings_key": self.key,
            "clips": clips,
        }
        write_json(self.root / INDEX_NAME, index)
        used = {entry["shard"] for entry in clips.values()}
        for path in self.shards.glob("shard-*.npz"):
            if path.name not in used:
                path.unlink()
        return index
