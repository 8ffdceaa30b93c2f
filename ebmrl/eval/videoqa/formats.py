"""Loaders for the standard annotation formats of three zero-shot VideoQA benchmarks.

- **ActivityNet-QA** (``*_q.json`` + ``*_a.json``): questions ``{video_name, question,
  question_id}`` and answers ``{answer, type, question_id}`` joined by ``question_id``;
  answer type 3 is yes/no, the subset the method reports (exact-match accuracy). Videos:
  ``<videos>/<video_name>.<ext>`` or ``<videos>/v_<video_name>.<ext>``.
- **NExT-QA** (csv): ``video, frame_count, width, height, question, answer, qid, type,
  a0..a4``; ``answer`` is the index of the right option, ``type`` the question type (CW,
  CH, TN, TC, TP, DL, DC, DO). Videos: ``<videos>/<map[video]>.mp4`` with the release's
  ``map_vid_vidorID.json``, else ``<videos>/<video>.mp4``.
- **PororoQA** (json): ``{"PororoQA": [{video_name, supporting_num, question,
  answer0..answer4, correct_idx, ...}]}``. Videos: the release's
  ``<videos>/<season>/<episode>/<supporting_num>.gif``, or a ``video_map`` entry for
  ``"<video_name>/<supporting_num>"``. The shots around the supporting one (numbers
  ``supporting_num - 8`` to ``supporting_num + 7``, from 1, those that exist, found the
  same way) are the item's ``shots``: the authors show the model frames of all of them.

A ``video_map`` (JSON object: benchmark video key -> path relative to ``videos``, with or
without extension) overrides the layout for any benchmark. Loaders check the annotations
and raise ``AnnotationError`` naming the file and the record; they do not open videos:
a missing video is reported per question when it is answered.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ebmrl.io import read_json

VIDEO_EXTENSIONS = ("mp4", "mkv", "webm", "avi", "mov", "m4v", "gif")
OPTION_LETTERS = "ABCDEFGH"

# NExT-QA question types and their groups (causal, temporal, descriptive).
NEXTQA_GROUPS = {"C": "causal", "T": "temporal", "D": "descriptive"}
# ActivityNet-QA answer/question types (its README).
ACTIVITYNET_TYPES = {
    0: "motion",
    1: "spatial",
    2: "temporal",
    3: "yes/no",
    4: "color",
    5: "object",
    6: "location",
    7: "number",
    8: "other",
}


class AnnotationError(ValueError):
    """An annotation file does not follow its benchmark's format (file and record named)."""


@dataclass(frozen=True)
class QAItem:
    """One question. ``answer`` is "yes"/"no" (yes_no), an option letter (choice) or a
    short lower-case text matched exactly (open)."""

    benchmark: str
    qid: str
    video: str
    question: str
    answer: str
    kind: Literal["yes_no", "choice", "open"]
    options: tuple[str, ...] = ()
    qtype: str = "all"
    format: str = ""  # activitynet_qa | nextqa | pororoqa
    shots: tuple[str, ...] = ()  # PororoQA: the shots around the supporting one, in order

    @property
    def answer_index(self) -> int:
        """A choice question's right option, from 0."""
        return OPTION_LETTERS.index(self.answer)


# --------------------------------------------------------------------------- videos
def _read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return read_json(path, AnnotationError)
    except FileNotFoundError:
        raise AnnotationError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AnnotationError(f"{path}: cannot read: {exc}") from None


def load_video_map(path: str | Path | None) -> dict[str, str]:
    if path is None:
        return {}
    data = _read_json(path)
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise AnnotationError(f"{path}: a video map is a JSON object of key -> relative path")
    return {str(k): v for k, v in data.items()}


def find_video(videos: str | Path, *stems: str) -> str:
    """The first existing ``<videos>/<stem>`` (as is, or with a video extension); else
    the first candidate path (reported as missing when it is read)."""
    root = Path(videos)
    candidates = []
    for stem in stems:
        path = root / stem
        if path.suffix.lstrip(".").lower() in VIDEO_EXTENSIONS:
            candidates.append(path)
        candidates += [path.with_name(f"{path.name}.{ext}") for ext in VIDEO_EXTENSIONS]
    for path in candidates:
        if path.is_file():
            return str(path)
    return str(candidates[0])


def _field(record: Any, name: str, where: str) -> Any:
    if not isinstance(record, dict):
        raise AnnotationError(f"{where}: a record must be an object, got {type(record).__name__}")
    if name not in record or record[name] in (None, ""):
        raise AnnotationError(f"{where}: missing field {name!r}")
    return record[name]


def _option_index(value: Any, count: int, where: str) -> int:
    try:
        index = int(str(value).strip())
    except ValueError:
        raise AnnotationError(f"{where}: answer index {value!r} is not an integer") from None
    if not 0 <= index < count:
        raise AnnotationError(f"{where}: answer index {index} outside 0..{count - 1}")
    return index


# ---------------------------------------------------------------- ActivityNet-QA
def load_activitynet_qa(
    questions: str | Path,
    answers: str | Path,
    videos: str | Path,
    *,
    yes_no_only: bool = True,
    video_map: str | Path | None = None,
    name: str = "activitynet_qa",
) -> list[QAItem]:
    """Questions joined with answers; only the yes/no subset unless ``yes_no_only=False``
    (the other answers are then "open": exact match of the normalised text)."""
    q_rows, a_rows = _read_json(questions), _read_json(answers)
    for path, rows in ((questions, q_rows), (answers, a_rows)):
        if not isinstance(rows, list):
            raise AnnotationError(f"{path}: expected a JSON array of records")
    by_id: dict[str, dict] = {}
    for index, row in enumerate(a_rows):
        qid = str(_field(row, "question_id", f"{answers}: record {index}"))
        by_id[qid] = row
    mapping = load_video_map(video_map)
    items = []
    for index, row in enumerate(q_rows):
        where = f"{questions}: record {index}"
        qid = str(_field(row, "question_id", where))
        answer_row = by_id.get(qid)
        if answer_row is None:
            raise AnnotationError(f"{where}: no answer for question_id {qid!r} in {answers}")
        answer = " ".join(str(_field(answer_row, "answer", f"{answers}: {qid}")).lower().split())
        kind_code = answer_row.get("type")
        is_yes_no = kind_code == 3 or (kind_code is None and answer in ("yes", "no"))
        if yes_no_only and not (is_yes_no and answer in ("yes", "no")):
            continue
        video_name = str(_field(row, "video_name", where))
        stems = [mapping[video_name]] if video_name in mapping else [video_name, f"v_{video_name}"]
        items.append(
            QAItem(
                benchmark=name,
                qid=qid,
                video=find_video(videos, *stems),
                question=str(_field(row, "question", where)).strip(),
                answer=answer,
                kind="yes_no" if answer in ("yes", "no") else "open",
                qtype=ACTIVITYNET_TYPES.get(kind_code, str(kind_code)),
                format="activitynet_qa",
            )
        )
    return items


# ----------------------------------------------------------------------- NExT-QA
NEXTQA_COLUMNS = ("video", "question", "answer", "qid", "type", "a0", "a1", "a2", "a3", "a4")


def load_nextqa(
    annotations: str | Path,
    videos: str | Path,
    *,
    video_map: str | Path | None = None,
    name: str = "nextqa",
) -> list[QAItem]:
    path = Path(annotations)
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in NEXTQA_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise AnnotationError(f"{path}: missing column(s) {', '.join(missing)}")
            rows = list(reader)
    except FileNotFoundError:
        raise AnnotationError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise AnnotationError(f"{path}: cannot read: {exc}") from None
    mapping = load_video_map(video_map)
    items = []
    for line, row in enumerate(rows, start=2):
        where = f"{path}: line {line}"
        options = tuple(str(_field(row, f"a{i}", where)).strip() for i in range(5))
        video = str(_field(row, "video", where)).strip()
        items.append(
            QAItem(
                benchmark=name,
                qid=f"{video}_{_field(row, 'qid', where)}",
                video=find_video(videos, mapping.get(video, video)),
                question=str(_field(row, "question", where)).strip(),
                answer=OPTION_LETTERS[_option_index(row["answer"], len(options), where)],
                kind="choice",
                options=options,
                qtype=str(_field(row, "type", where)).strip(),
                format="nextqa",
            )
        )
    return items


def nextqa_group(qtype: str) -> str:
    """CW -> causal, TN -> temporal, DC -> descriptive (the first letter of the type)."""
    return NEXTQA_GROUPS.get(qtype[:1].upper(), "other")


# ---------------------------------------------------------------------- PororoQA
def pororo_video_stem(video_name: str, supporting_num: str) -> str:
    """The release's layout: ``<season>/<episode>/<supporting_num>`` (commas dropped)."""
    episode = video_name.replace(",", "")
    season = "_".join(episode.split("_")[:-1]) or episode
    return f"{season}/{episode}/{supporting_num}"


PORORO_SHOTS_BEFORE, PORORO_SHOTS_AFTER = 8, 7  # the authors' window around the supporting shot


def pororo_shots(
    videos: str | Path, video_name: str, supporting_num: str, mapping: dict[str, str]
) -> tuple[str, ...]:
    """The existing shot files around the supporting shot, in order (none when
    ``supporting_num`` is not a number)."""
    try:
        centre = int(str(supporting_num).strip())
    except ValueError:
        return ()
    found = []
    for number in range(max(1, centre - PORORO_SHOTS_BEFORE), centre + PORORO_SHOTS_AFTER + 1):
        key = f"{video_name}/{number}"
        path = Path(
            find_video(videos, mapping.get(key, pororo_video_stem(video_name, str(number))))
        )
        if path.is_file():
            found.append(str(path))
    return tuple(found)


def load_pororoqa(
    annotations: str | Path,
    videos: str | Path,
    *,
    video_map: str | Path | None = None,
    name: str = "pororoqa",
) -> list[QAItem]:
    data = _read_json(annotations)
    rows = data.get("PororoQA") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise AnnotationError(f"{annotations}: expected an object with a 'PororoQA' array")
    mapping = load_video_map(video_map)
    items = []
    for index, row in enumerate(rows):
        where = f"{annotations}: PororoQA[{index}]"
        options = tuple(str(_field(row, f"answer{i}", where)).strip() for i in range(5))
        video_name = str(_field(row, "video_name", where))
        support = str(_field(row, "supporting_num", where))
        key = f"{video_name}/{support}"
        items.append(
            QAItem(
                benchmark=name,
                qid=str(row.get("qid", f"{key}#{index}")),
                video=find_video(videos, mapping.get(key, pororo_video_stem(video_name, support))),
                question=str(_field(row, "question", where)).strip(),
                answer=OPTION_LETTERS[_option_index(_field(row, "correct_idx", where), 5, where)],
                kind="choice",
                options=options,
                qtype=str(row.get("type") or "all"),
                format="pororoqa",
                shots=pororo_shots(videos, video_name, support, mapping),
            )
        )
    return items


LOADERS = {"activitynet_qa": load_activitynet_qa, "nextqa": load_nextqa, "pororoqa": load_pororoqa}
