"""Ingest: find the source videos (local folder or ``s3://`` prefix), probe them, record a
manifest; import released-format records as samples.

Every video file under the source gets one manifest row. Files that cannot serve as clips
(unreadable, empty, truncated, not a video, audio only, absurd size/length/frame rate,
or reached through a path that escapes the source root) get ``status="quarantined"``
and a human-readable ``reason``: nothing is dropped silently. The same content found
twice is recorded once (the others are listed as duplicates in the report), and its
``clip_id`` is derived from the content hash, so renaming a file changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import tempfile
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ebmrl import video
from ebmrl.config import IngestLimitsSection
from ebmrl.io import parse_json, parse_json_lines
from ebmrl.schema import MANIFEST_COLUMNS, Clip, Sample, SchemaError

CHUNK = 1 << 20


@dataclass
class IngestResult:
    clips: list[Clip]
    samples: list[Sample]
    duplicates: list[dict[str, str]]
    ignored: list[str]
    rejected_records: list[dict[str, Any]]

    @property
    def quarantined(self) -> list[Clip]:
        return [c for c in self.clips if c.status != "ok"]

    def report(self) -> dict[str, Any]:
        return {
            "counts": {
                "videos": len(self.clips),
                "ok": sum(c.status == "ok" for c in self.clips),
                "quarantined": len(self.quarantined),
                "duplicates": len(self.duplicates),
                "ignored_files": len(self.ignored),
                "samples_imported": len(self.samples),
                "records_rejected": len(self.rejected_records),
            },
            "quarantined": [{"uri": c.uri, "reason": c.reason} for c in self.quarantined],
            "duplicates": self.duplicates,
            "ignored_files": self.ignored[:200],
            "rejected_records": self.rejected_records[:500],
        }


# ------------------------------------------------------------------------- listing
@dataclass(frozen=True)
class Listed:
    uri: str  # what later stages open (local path or s3:// URL)
    rel: str  # posix path under the source root
    escapes: str | None = None  # why the path leaves the source root, if it does


def is_remote(uri: str) -> bool:
    return video.is_remote(uri)


def _escapes(rel: str) -> bool:
    normal = posixpath.normpath(rel)
    return (
        rel.startswith("/") or normal == ".." or normal.startswith("../") or ".." in rel.split("/")
    )


def list_source(source: str) -> list[Listed]:
    """Every file under ``source`` (sorted), through fsspec.

    Local symlinks are followed only when their target stays inside the root; a link
    that leads outside (or a key with ``..`` segments) is listed with ``escapes`` set,
    so it is quarantined rather than read.
    """
    import fsspec

    fs, root = fsspec.core.url_to_fs(source)
    if not fs.exists(root):
        raise FileNotFoundError(f"ingest source {source!r} does not exist")
    if not fs.isdir(root):
        raise NotADirectoryError(f"ingest source {source!r} is not a folder or prefix")
    remote = is_remote(source)
    base = source.rstrip("/")
    real_root = os.path.realpath(root) if not remote else None
    listed: list[Listed] = []
    pending = [root]
    seen_dirs: set[str] = set()
    while pending:
        folder = pending.pop()
        for entry in fs.ls(folder, detail=True):
            name = entry["name"]
            rel = posixpath.relpath(name, root) if not remote else name[len(root.rstrip("/")) + 1 :]
            uri = f"{base}/{rel}"
            if remote and _escapes(rel):
                listed.append(Listed(uri, rel, "object key with '..' segments"))
                continue
            if not remote and entry.get("islink"):
                target = os.path.realpath(name)
                if os.path.commonpath([real_root, target]) != real_root:
                    listed.append(Listed(uri, rel, f"symlink to {target}"))
                    continue
            if entry["type"] == "directory":
                key = os.path.realpath(name) if not remote else name
                if key not in seen_dirs:  # a link back to a parent folder lists once
                    seen_dirs.add(key)
                    pending.append(name)
            else:
                listed.append(Listed(uri, rel))
    return sorted(listed, key=lambda item: item.rel)


# ------------------------------------------------------------------------- probing
_DECORD_PREFIX = re.compile(r"\[\d\d:\d\d:\d\d\]\s+\S+:\d+:\s*")


def clean_reason(reason: str) -> str:
    """decord's messages carry its build paths and timestamps; keep what a human needs."""
    text = _DECORD_PREFIX.sub("", reason).strip()
    lowered = text.lower()
    if "cannot find video stream" in lowered:
        return "no video stream (audio only or not a video)"
    if "failed to measure duration" in lowered:
        return "not a video (no duration or frame count: an image or broken metadata)"
    if "av_read_frame failed" in lowered or "error reading" in lowered:
        return f"truncated or corrupt container ({text[:160]})"
    if "invalid data found" in lowered or "could not find codec" in lowered:
        return f"not a decodable video ({text[:160]})"
    return text[:300]


def check_limits(info: video.VideoInfo, limits: IngestLimitsSection) -> str | None:
    """Why the probed values are absurd (outside ``ingest.limits``), or None."""
    if info.num_frames < limits.min_frames:
        return (
            f"absurd: {info.num_frames} frame(s), fewer than limits.min_frames={limits.min_frames}"
        )
    if not limits.min_fps <= info.fps <= limits.max_fps:
        return f"absurd: frame rate {info.fps:.3g} outside [{limits.min_fps}, {limits.max_fps}]"
    if not limits.min_duration_s <= info.duration_s <= limits.max_duration_s:
        return (
            f"absurd: duration {info.duration_s:.3g} s outside "
            f"[{limits.min_duration_s}, {limits.max_duration_s}] s"
        )
    low, high = min(info.width, info.height), max(info.width, info.height)
    if low < limits.min_side or high > limits.max_side:
        return (
            f"absurd: size {info.width}x{info.height} outside sides "
            f"[{limits.min_side}, {limits.max_side}] px"
        )
    return None


def check_decodes(path: str, info: video.VideoInfo) -> str | None:
    """Decode the first, middle and last frame; a truncated stream fails here."""
    import decord

    indices = sorted({0, info.num_frames // 2, info.num_frames - 1})
    try:
        reader = decord.VideoReader(path, ctx=decord.cpu(0))
        frames = reader.get_batch(indices).asnumpy()
    except Exception as exc:  # decord's own error classes
        return f"cannot decode frames {indices}: {clean_reason(str(exc))}"
    if frames.shape != (len(indices), info.height, info.width, 3):
        return f"frames decode to shape {frames.shape}, expected {info.height}x{info.width}"
    return None


def _hash_local(path: str) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _download_and_hash(uri: str, tmp_dir: str) -> tuple[str, int, str]:
    import fsspec

    digest, size = hashlib.sha256(), 0
    fd, local = tempfile.mkstemp(dir=tmp_dir, suffix=posixpath.splitext(uri)[1])
    with os.fdopen(fd, "wb") as out, fsspec.open(uri, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            out.write(chunk)
            size += len(chunk)
    return digest.hexdigest(), size, local


def clip_id_for(sha256: str) -> str:
    return sha256[:16]


def inspect_file(
    item: Listed, limits: IngestLimitsSection, verify_decode: bool, tmp_dir: str
) -> Clip:
    """Hash, probe and check one file; never raises for a bad file (quarantines it)."""
    unreadable_id = "x" + hashlib.sha256(item.uri.encode()).hexdigest()[:15]
    record = Clip(clip_id=unreadable_id, uri=item.uri, sha256=None, rel=item.rel)
    if item.escapes:
        return record.quarantine(f"path escapes the source root: {item.escapes}")
    local = None
    try:
        if is_remote(item.uri):
            sha, size, local = _download_and_hash(item.uri, tmp_dir)
            path = local
        else:
            sha, size = _hash_local(item.uri)
            path = item.uri
    except OSError as exc:
        return record.quarantine(f"cannot read: {exc.strerror or exc}")
    try:
        record.sha256, record.size_bytes, record.clip_id = sha, size, clip_id_for(sha)
        if size == 0:
            return record.quarantine("empty file (0 bytes)")
        try:
            info = video.probe(path)
        except video.VideoError as exc:
            return record.quarantine(clean_reason(exc.reason))
        record.duration_s, record.fps = round(info.duration_s, 6), round(info.fps, 6)
        record.width, record.height, record.num_frames = info.width, info.height, info.num_frames
        problem = check_limits(info, limits)
        if problem is None and verify_decode:
            problem = check_decodes(path, info)
        return record.quarantine(problem) if problem else record
    finally:
        if local is not None:
            os.unlink(local)


# -------------------------------------------------------------------------- records
def _read_text(uri: str) -> str:
    import fsspec

    with fsspec.open(uri, "r", encoding="utf-8") as handle:
        return handle.read()


def _parse_records(text: str, origin: str) -> list[Any]:
    if text.lstrip().startswith("["):
        data = parse_json(text, origin, SchemaError)
        if not isinstance(data, list):
            raise SchemaError(f"{origin}: expected a JSON array of records")
        return data
    return parse_json_lines(text, origin, SchemaError)


def _key(uri: str) -> str:
    """Comparable form of a clip location (absolute local path or the URL)."""
    return uri if is_remote(uri) else os.path.abspath(uri)


def resolve_video_path(records_uri: str, video_path: str) -> tuple[str | None, str | None]:
    """The clip URI a record's (relative) ``video_path`` names, or why it is refused."""
    if not video_path or video_path.startswith("/") or "://" in video_path:
        return None, f"video_path {video_path!r} must be relative to the records file"
    if _escapes(video_path):
        return None, f"video_path {video_path!r} escapes the records folder ('..')"
    folder = posixpath.dirname(records_uri.rstrip("/"))
    return (f"{folder}/{video_path}" if folder else video_path), None


def import_records(
    records_uris: Iterable[str], clips_by_key: dict[str, Clip]
) -> tuple[list[Sample], list[dict[str, Any]]]:
    """Samples from released-format files whose video was ingested fine; the rest rejected
    with a reason. Each sample gets the manifest's ``clip_id`` and ``uri``."""
    samples: list[Sample] = []
    rejected: list[dict[str, Any]] = []
    for records_uri in records_uris:
        for index, record in enumerate(_parse_records(_read_text(records_uri), records_uri)):
            where = {"file": records_uri, "record": index}
            if isinstance(record, dict) and "problem_id" in record:
                where["problem_id"] = record["problem_id"]
            try:
                sample = Sample.from_released(record)
            except SchemaError as exc:
                rejected.append({**where, "reason": f"not a released record: {exc}"})
                continue
            uri, problem = resolve_video_path(records_uri, sample.video)
            clip = clips_by_key.get(_key(uri)) if uri else None
            if problem is None and clip is None:
                problem = f"video {sample.video!r} is not among the ingested clips"
            elif clip is not None and clip.status != "ok":
                problem = f"video {sample.video!r} is quarantined: {clip.reason}"
            if problem:
                rejected.append({**where, "reason": problem})
                continue
            samples.append(sample.model_copy(update={"clip_id": clip.clip_id, "video": clip.uri}))
    return samples, rejected


# ---------------------------------------------------------------------------- ingest
def ingest(
    source: str,
    *,
    records: Iterable[str] = (),
    extensions: Iterable[str] = ("mp4",),
    limits: IngestLimitsSection = IngestLimitsSection(),
    verify_decode: bool = True,
    workers: int = 4,
    progress: bool = False,
) -> IngestResult:
    """List, hash, probe and check every video under ``source``; import ``records``."""
    wanted = {e.lower().lstrip(".") for e in extensions}
    listed = list_source(source)
    # A path that escapes the root is reported whatever its name: it may be a linked folder.
    candidates = [
        i for i in listed if i.escapes or posixpath.splitext(i.rel)[1].lower().lstrip(".") in wanted
    ]
    ignored = [i.uri for i in listed if i not in candidates]
    with tempfile.TemporaryDirectory(prefix="ebmrl-ingest-") as tmp_dir:
        inspect: Callable[[Listed], Clip] = lambda item: inspect_file(  # noqa: E731
            item, limits, verify_decode, tmp_dir
        )
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            results = pool.map(inspect, candidates)
            if progress:
                from tqdm import tqdm

                results = tqdm(results, total=len(candidates), desc="probe videos", unit="file")
            inspected = list(results)
    # The same content is recorded once: the first path (sorted) stands for it.
    clips: list[Clip] = []
    first_by_hash: dict[str, Clip] = {}
    clips_by_key: dict[str, Clip] = {}
    duplicates = []
    for record in inspected:
        original = first_by_hash.get(record.sha256) if record.sha256 else None
        if original is not None:
            duplicates.append(
                {"uri": record.uri, "same_as": original.uri, "clip_id": original.clip_id}
            )
            clips_by_key[_key(record.uri)] = original
            continue
        if record.sha256:
            first_by_hash[record.sha256] = record
        clips.append(record)
        clips_by_key[_key(record.uri)] = record
    samples, rejected = import_records(records, clips_by_key)
    assign_sessions(clips, samples)
    return IngestResult(clips, samples, duplicates, ignored, rejected)


def assign_sessions(clips: list[Clip], samples: list[Sample]) -> None:
    """A clip's session: the first (by sample id) imported sample's session that uses it,
    else its folder under the source root (a file at the root is its own session)."""
    from_samples: dict[str, str] = {}
    for sample in sorted(samples, key=lambda s: str(s.sample_id)):
        if sample.clip_id is not None:
            from_samples.setdefault(sample.clip_id, sample.session_id)
    for clip in clips:
        folder = posixpath.dirname(clip.rel)
        clip.session_id = (
            from_samples.get(clip.clip_id) or folder or posixpath.splitext(clip.rel)[0]
        )


# --------------------------------------------------------------------------- output
def manifest_table(clips: Iterable[Clip]):
    import pyarrow as pa

    schema = pa.schema(
        [
            ("clip_id", pa.string()),
            ("uri", pa.string()),
            ("sha256", pa.string()),
            ("size_bytes", pa.int64()),
            ("duration_s", pa.float64()),
            ("fps", pa.float64()),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("num_frames", pa.int64()),
            ("session_id", pa.string()),
            ("status", pa.string()),
            ("reason", pa.string()),
        ]
    )
    return pa.Table.from_pylist([c.row() for c in clips], schema=schema)


def write_manifest(path: str | Path, clips: Iterable[Clip]) -> None:
    import pyarrow.parquet as pq

    from ebmrl.io import atomic_path

    with atomic_path(path) as tmp:
        pq.write_table(manifest_table(clips), tmp)


def read_manifest(path: str | Path, *, ok_only: bool = False) -> list[Clip]:
    """Manifest rows as records (``ok_only``: the clips later stages may use)."""
    import pyarrow.parquet as pq

    path = Path(path)
    if path.is_dir():
        path = path / "manifest.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"no ingest manifest at {path} (did the ingest stage run?)")
    rows = pq.read_table(path).to_pylist()
    missing = [c for c in MANIFEST_COLUMNS if rows and c not in rows[0]]
    if missing:
        raise SchemaError(f"{path}: manifest lacks column(s) {', '.join(missing)}")
    clips = [Clip(**{k: row[k] for k in MANIFEST_COLUMNS}) for row in rows]
    return [c for c in clips if c.status == "ok"] if ok_only else clips
