"""Records of the pipeline and the released EBM-RL data format.

``Sample`` is one role-play turn to predict: the clip, the two characters, the dialogue
history and the reference reply; ``process`` optionally carries the reference
perception + think trace. ``load_released``/``dump_released`` read and write the public
release's JSON records losslessly: every field and value survives a round trip, unknown
fields included (they travel in ``Sample.extra``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ebmrl import tags
from ebmrl.io import atomic_write_text, read_json


class SchemaError(ValueError):
    """A record does not follow the expected format; the message names record and field."""


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Turn(Record):
    speaker: str
    utterance: str


class SceneAttributes(Record):
    """Ground truth of what a clip shows, where it is known (the demo's rendered clips:
    ``ebmrl.demo``). Not in the public release: our extension, carried from the
    records ingest imports to the evaluation's perception metric. Unknown: ``None``."""

    background: str | None = None
    lighting: str | None = None
    figures: int | None = None
    figure_colour: str | None = None
    motion: str | None = None
    danger: bool | None = None

    def known(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class CharacterProfile(BaseModel):
    """A character sheet. Minor characters fill only some fields; extra fields are kept."""

    model_config = ConfigDict(extra="allow")

    name: str
    personality: str | None = None
    catchphrases: list[str] | str | None = None
    speech_style: str | None = None
    relationships: list[str] | str | None = None
    strengths: list[str] | str | None = None
    weaknesses: list[str] | str | None = None
    background: str | None = None
    motivation: str | None = None

    def to_released(self) -> dict[str, Any]:
        return self.model_dump(exclude={"name"}, exclude_none=True)

    def describe(self) -> str:
        """Readable multi-line sheet for prompts."""
        lines = [f"Name: {self.name}"]
        for key, value in self.to_released().items():
            if isinstance(value, list):
                value = "; ".join(map(str, value))
            lines.append(f"{key.replace('_', ' ').capitalize()}: {value}")
        return "\n".join(lines)


# Columns of the ingest manifest, in order.
MANIFEST_COLUMNS = (
    "clip_id",
    "uri",
    "sha256",
    "size_bytes",
    "duration_s",
    "fps",
    "width",
    "height",
    "num_frames",
    "session_id",
    "status",
    "reason",
)


@dataclass
class Clip:
    """One video clip as recorded by ingest (a manifest row).

    ``status`` is ``"ok"`` or ``"quarantined"`` (then ``reason`` says why); ``clip_id`` is
    derived from the content hash, so renaming a file changes nothing.
    """

    clip_id: str
    uri: str
    sha256: str | None
    size_bytes: int | None = None
    duration_s: float | None = None
    fps: float | None = None
    width: int | None = None
    height: int | None = None
    num_frames: int | None = None
    session_id: str | None = None
    status: str = "ok"
    reason: str | None = None
    rel: str = field(default="", repr=False)  # path under the source root (not stored)

    def quarantine(self, reason: str) -> Clip:
        self.status, self.reason = "quarantined", reason
        return self

    def row(self) -> dict[str, Any]:
        data = asdict(self)
        return {k: data[k] for k in MANIFEST_COLUMNS}


# Field order of a released record, for readable exports.
_RELEASED_ORDER = (
    "problem_id",
    "session_id",
    "segment_part",
    "sub_{k}_sample_order",
    "total_sub_{k}_samples_in_session",
    "sub_sample_type",
    "user",
    "assistant",
    "data_type",
    "data_source",
    "generation_type",
    "dialogue",
    "target",
    "video_path",
    "problem_type",
    "solution",
    "process",
    "clip_id",
    "scene_attributes",
)


class Sample(Record):
    """One role-play sample: predict ``target`` (spoken by ``assistant``) from the clip."""

    sample_id: int | str
    session_id: str
    user: str
    assistant: str
    source: str | None = Field(None, description="film or universe the characters come from")
    dialogue: list[Turn]
    target: Turn
    video: str = Field(description="path or URI of the clip")
    generation_type: str | None = Field(None, description="raw_lines (film lines) or llm_api")
    process: str | None = Field(
        None, description="reference trace: <perception>/<vision> block then <think> block"
    )
    clip_id: str | None = None
    segment_part: str | None = None
    sub_sample_type: int | None = None
    sample_order: int | None = None
    series_total: int | None = None
    data_type: str | None = None
    problem_type: str | None = None
    solution: str | None = None
    scene_attributes: SceneAttributes | None = Field(
        None, description="ground truth of the clip's scene, when known (demo clips)"
    )
    extra: dict[str, Any] = Field(default_factory=dict)

    @property
    def perception(self) -> str | None:
        return tags.parse(self.process or "", ("perception",)).perception

    @property
    def think(self) -> str | None:
        return tags.parse(self.process or "", ("think",)).think

    @property
    def has_trace(self) -> bool:
        return bool(self.perception) and bool(self.think)

    @staticmethod
    def trace(perception: str, think: str, names: tags.TagNames = tags.DEFAULT_TAGS) -> str:
        """The ``process`` text for a perception + think pair, in the tag names in use
        (params.yaml ``tags``; reading accepts either name for the perception block)."""
        p, t = names.perception, names.think
        return f"<{p}>\n{perception.strip()}\n</{p}>\n\n<{t}>\n{think.strip()}\n</{t}>"

    # ------------------------------------------------------------------ released format
    @classmethod
    def from_released(cls, record: Mapping[str, Any]) -> Sample:
        if not isinstance(record, Mapping):
            raise SchemaError(f"a record must be a JSON object, got {type(record).__name__}")
        rec = dict(record)
        missing = [
            k
            for k in ("problem_id", "session_id", "user", "assistant", "dialogue", "target")
            if k not in rec
        ]
        if "video_path" not in rec:
            missing.append("video_path")
        if missing:
            raise SchemaError(f"missing field(s): {', '.join(missing)}")
        # sub_sample_type names the keys of the order fields (sub_<k>_sample_order);
        # a non-integer value is kept verbatim in ``extra``.
        kind = rec.get("sub_sample_type")
        order = total = None
        if isinstance(kind, int) and not isinstance(kind, bool):
            del rec["sub_sample_type"]
            order_key, total_key = (
                f"sub_{kind}_sample_order",
                f"total_sub_{kind}_samples_in_session",
            )
            order = rec.pop(order_key) if rec.get(order_key) is not None else None
            total = rec.pop(total_key) if rec.get(total_key) is not None else None
        fields = {
            "sample_id": rec.pop("problem_id"),
            "session_id": rec.pop("session_id"),
            "user": rec.pop("user"),
            "assistant": rec.pop("assistant"),
            "dialogue": rec.pop("dialogue"),
            "target": rec.pop("target"),
            "video": rec.pop("video_path"),
            "sub_sample_type": None if "sub_sample_type" in rec else kind,
            "sample_order": order,
            "series_total": total,
        }
        # Optional fields: an explicit null stays in ``extra`` so it round-trips as null.
        for ours, theirs in (
            ("source", "data_source"),
            ("generation_type", "generation_type"),
            ("process", "process"),
            ("segment_part", "segment_part"),
            ("data_type", "data_type"),
            ("problem_type", "problem_type"),
            ("solution", "solution"),
            ("clip_id", "clip_id"),
            ("scene_attributes", "scene_attributes"),
        ):
            if rec.get(theirs) is not None:
                fields[ours] = rec.pop(theirs)
        # Whatever is left (unknown to us, or inconsistent with sub_sample_type) is kept.
        fields["extra"] = rec
        try:
            sample = cls.model_validate(fields, strict=True)
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            loc = ".".join(str(p) for p in err["loc"])
            raise SchemaError(f"field {loc}: {err['msg']} (got {err.get('input')!r})") from None
        return sample

    def to_released(self) -> dict[str, Any]:
        k = self.sub_sample_type
        values: dict[str, Any] = {
            "problem_id": self.sample_id,
            "session_id": self.session_id,
            "segment_part": self.segment_part,
            f"sub_{k}_sample_order": self.sample_order,
            f"total_sub_{k}_samples_in_session": self.series_total,
            "sub_sample_type": self.sub_sample_type,
            "user": self.user,
            "assistant": self.assistant,
            "data_type": self.data_type,
            "data_source": self.source,
            "generation_type": self.generation_type,
            "dialogue": [t.model_dump() for t in self.dialogue],
            "target": self.target.model_dump(),
            "video_path": self.video,
            "problem_type": self.problem_type,
            "solution": self.solution,
            "process": self.process,
            # Not in the public release: our ingest's content-addressed clip id, and the
            # clip's known scene attributes.
            "clip_id": self.clip_id,
            "scene_attributes": (
                self.scene_attributes.known() if self.scene_attributes is not None else None
            ),
        }
        # Optional fields absent from the source record stay absent (None = absent).
        out: dict[str, Any] = {}
        for key in _RELEASED_ORDER:
            key = key.format(k=k)
            if key in values and values[key] is not None:
                out[key] = values[key]
        for key, value in self.extra.items():
            out.setdefault(key, value)
        return out


def _read_records(path: Path) -> list[Any]:
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SchemaError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
        return data
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise SchemaError(f"{path}: invalid JSON on line {number}: {exc.msg}") from None
    return records


def parse_released(records: Iterable[Any], origin: str = "<records>") -> list[Sample]:
    samples = []
    for index, record in enumerate(records):
        try:
            samples.append(Sample.from_released(record))
        except SchemaError as exc:
            pid = record.get("problem_id") if isinstance(record, Mapping) else None
            ident = f"record {index}" + (f" (problem_id={pid!r})" if pid is not None else "")
            raise SchemaError(f"{origin}: {ident}: {exc}") from None
    return samples


def load_released(path: str | Path) -> list[Sample]:
    """Read a released-format file (a JSON array, or JSON lines) into samples."""
    path = Path(path)
    try:
        records = _read_records(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise SchemaError(f"{path}: cannot read: {exc}") from None
    if not isinstance(records, list):
        raise SchemaError(f"{path}: expected a JSON array of records, got {type(records).__name__}")
    return parse_released(records, origin=str(path))


def dump_released(samples: Iterable[Sample], path: str | Path) -> None:
    """Write samples as a released-format JSON array (atomically)."""
    records = [s.to_released() for s in samples]
    atomic_write_text(path, json.dumps(records, indent=2, ensure_ascii=False) + "\n")


# ------------------------------------------------------------------------- profiles
def history_text(turns: Sequence[Turn]) -> str:
    """A dialogue as the prompts show it: one ``speaker: utterance`` line per turn."""
    if not turns:
        return "(nothing has been said yet)"
    return "\n".join(f"{turn.speaker}: {turn.utterance}" for turn in turns)


class ProfileBook(BaseModel):
    """Character profiles per film, plus global user personas (``user_fan``)."""

    model_config = ConfigDict(extra="allow")

    movies: dict[str, dict[str, CharacterProfile]] = Field(default_factory=dict)
    global_user_profiles: dict[str, CharacterProfile] = Field(default_factory=dict)
    character_tiers: dict[str, dict[str, list[str]]] = Field(default_factory=dict)
    movie_aliases: dict[str, str] = Field(default_factory=dict)

    def get(self, name: str, movie: str | None = None) -> CharacterProfile | None:
        """Profile of ``name`` in ``movie`` (aliases resolved), else a global persona."""
        if movie is not None:
            movie = self.movie_aliases.get(movie, movie)
            found = self.movies.get(movie, {}).get(name)
            if found is not None:
                return found
        else:
            for characters in self.movies.values():
                if name in characters:
                    return characters[name]
        return self.global_user_profiles.get(name)


def _profiles_with_names(table: Any, where: str) -> dict[str, dict[str, Any]]:
    if not isinstance(table, Mapping):
        raise SchemaError(f"{where}: expected an object of character profiles")
    out = {}
    for name, profile in table.items():
        if not isinstance(profile, Mapping):
            raise SchemaError(f"{where}.{name}: a profile must be an object")
        out[name] = {**profile, "name": name}
    return out


def parse_profiles(data: Any, origin: str = "<profiles>") -> ProfileBook:
    if not isinstance(data, Mapping):
        raise SchemaError(f"{origin}: expected a JSON object")
    data = dict(data)
    try:
        movies = {
            movie: _profiles_with_names(chars, f"movies.{movie}")
            for movie, chars in (data.pop("movies", {}) or {}).items()
        }
        users = _profiles_with_names(
            data.pop("global_user_profiles", {}) or {}, "global_user_profiles"
        )
        return ProfileBook.model_validate({"movies": movies, "global_user_profiles": users, **data})
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise SchemaError(f"{origin}: field {loc}: {err['msg']}") from None
    except AttributeError:
        raise SchemaError(f"{origin}: 'movies' must map film names to profiles") from None


def load_profiles(path: str | Path) -> ProfileBook:
    return parse_profiles(read_json(path, SchemaError), origin=str(path))


def profiles_to_released(book: ProfileBook) -> dict[str, Any]:
    out: dict[str, Any] = {}
    extra = book.model_extra or {}
    if "source" in extra:
        out["source"] = extra["source"]
    out["global_user_profiles"] = {n: p.to_released() for n, p in book.global_user_profiles.items()}
    out["movies"] = {
        movie: {n: p.to_released() for n, p in chars.items()}
        for movie, chars in book.movies.items()
    }
    out["character_tiers"] = book.character_tiers
    out["movie_aliases"] = book.movie_aliases
    for key, value in extra.items():
        out.setdefault(key, value)
    return out


def dump_profiles(book: ProfileBook, path: str | Path) -> None:
    text = json.dumps(profiles_to_released(book), indent=2, ensure_ascii=False) + "\n"
    atomic_write_text(path, text)
