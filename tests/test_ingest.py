import json
import os
import shutil
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import real_clip

from ebmrl import cli, video
from ebmrl.config import IngestLimitsSection
from ebmrl.data import ingest
from ebmrl.data.jsonl import read_samples
from ebmrl.demo import encode_mp4
from ebmrl.schema import load_released


def audio_only(path: Path) -> None:
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=16000)
        tone = (np.sin(np.arange(16000) / 16000 * 2 * np.pi * 440) * 0.3).astype(np.float32)[None]
        frame = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode()]:
            out.mux(packet)


def build_zoo(root: Path, good: Path, outside: Path) -> dict[str, tuple[str, str]]:
    """Bad files (name -> (expected reason fragment, kind)) next to good ones under root."""
    from PIL import Image

    data = good.read_bytes()
    zoo = {
        "empty.mp4": "empty file",
        "truncated.mp4": "truncated or corrupt",
        "notes.mp4": "",
        "random.mp4": "",
        "header_only.mp4": "",
        "audio_only.mp4": "no video stream",
        "image.mp4": "not a video",
        "one_frame.mp4": "absurd: 1 frame",
        "postage_stamp.mp4": "absurd: size 8x8",
        "escape.mp4": "path escapes the source root",
    }
    (root / "empty.mp4").write_bytes(b"")
    (root / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (root / "notes.mp4").write_text("this is not a video\n" * 50)
    (root / "random.mp4").write_bytes(np.random.default_rng(0).bytes(8192))
    (root / "header_only.mp4").write_bytes(data[:64])
    audio_only(root / "audio_only.mp4")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(root / "image.mp4", format="PNG")
    encode_mp4(np.zeros((1, 64, 64, 3), np.uint8), 8, root / "one_frame.mp4")
    encode_mp4(np.full((16, 8, 8, 3), 90, np.uint8), 8, root / "postage_stamp.mp4")
    outside.mkdir(exist_ok=True)
    shutil.copy(good, outside / "secret.mp4")
    os.symlink(outside / "secret.mp4", root / "escape.mp4")
    return zoo


@pytest.fixture
def zoo_source(tmp_path, demo_data):
    root = tmp_path / "source"
    (root / "film_a").mkdir(parents=True)
    goods = sorted(demo_data["videos"].glob("*.mp4"))[:2]
    shutil.copy(goods[0], root / "film_a" / "good_0.mp4")
    shutil.copy(goods[1], root / "good_1.mp4")
    shutil.copy(goods[0], root / "film_a" / "repeat_good_0.mp4")  # duplicate content
    shutil.copy(real_clip("bikes.mp4"), root / "film_a" / "bikes.mp4")  # real H.264
    (root / "README.txt").write_text("not a video, ignored by extension\n")
    zoo = build_zoo(root, goods[0], tmp_path / "outside")
    return root, zoo


def test_corrupt_zoo_is_quarantined_with_reasons_and_good_files_pass(zoo_source):
    root, zoo = zoo_source
    result = ingest.ingest(str(root), extensions=["mp4"])
    by_name = {Path(c.uri).name: c for c in result.clips}
    assert len(zoo) >= 8
    for name, fragment in zoo.items():
        clip = by_name[name]
        assert clip.status == "quarantined", (name, clip)
        assert clip.reason and fragment in clip.reason, (name, clip.reason)
        assert "/github/workspace" not in clip.reason  # decord's noise is cleaned
    for name in ("good_0.mp4", "good_1.mp4", "bikes.mp4"):
        clip = by_name[name]
        assert clip.status == "ok" and clip.reason is None, clip
        info = video.probe(clip.uri)
        assert (clip.width, clip.height, clip.num_frames) == (
            info.width,
            info.height,
            info.num_frames,
        )
        assert (
            clip.duration_s == pytest.approx(info.duration_s) and clip.clip_id == clip.sha256[:16]
        )
    # The duplicate is recorded once, under the first path; the text file is ignored, not lost.
    assert "repeat_good_0.mp4" not in by_name
    assert [(Path(d["uri"]).name, Path(d["same_as"]).name) for d in result.duplicates] == [
        ("repeat_good_0.mp4", "good_0.mp4")
    ]
    assert any(u.endswith("README.txt") for u in result.ignored)
    assert (
        by_name["good_0.mp4"].session_id == "film_a"
        and by_name["good_1.mp4"].session_id == "good_1"
    )


def test_stage_writes_manifest_and_strict_fails(zoo_source, tmp_path, capsys):
    root, zoo = zoo_source
    params = tmp_path / "params.yaml"
    params.write_text(f"ingest:\n  source: {root}\n  out: {tmp_path / 'out'}\n  records: []\n")
    assert cli.main(["--params", str(params), "ingest"]) == 0
    table = pq.read_table(tmp_path / "out" / "manifest.parquet")
    assert set(ingest.MANIFEST_COLUMNS) <= set(table.column_names)
    rows = table.to_pylist()
    assert sum(r["status"] == "quarantined" for r in rows) == len(zoo)
    assert len({r["sha256"] for r in rows if r["sha256"]}) == sum(1 for r in rows if r["sha256"])
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["counts"]["quarantined"] == len(zoo) and report["counts"]["duplicates"] == 1
    # Bad input (exit 2, the error contract of every stage), named; the work done is kept.
    assert (
        cli.main(["--params", str(params), "ingest", "--strict", "--out", str(tmp_path / "s")]) == 2
    )
    assert "--strict" in capsys.readouterr().err
    assert (tmp_path / "s" / "manifest.parquet").is_file()  # the work done is kept


def test_records_are_imported_with_manifest_clip_ids(demo_store):
    result = demo_store["result"]
    clips = {c.clip_id: c for c in result.clips}
    assert result.samples and not result.rejected_records
    for sample in result.samples:
        clip = clips[sample.clip_id]
        assert sample.video == clip.uri and clip.status == "ok"
        assert clip.session_id  # from the records
    sessions = {s.clip_id: s.session_id for s in result.samples}
    assert all(clips[c].session_id == s for c, s in sessions.items())
    assert read_samples(demo_store["ingest"] / "samples.jsonl") == result.samples


def test_records_with_bad_video_paths_are_rejected_with_reasons(tmp_path, demo_data):
    source = tmp_path / "videos"
    shutil.copytree(demo_data["videos"], source)
    (source / "clip_0000.mp4").write_bytes(b"")  # quarantined
    records = json.loads(demo_data["samples"].read_text())[:4]
    records[1]["video_path"] = "../../etc/passwd"
    records[2]["video_path"] = "videos/not_there.mp4"
    records[3] = {"problem_id": 99}
    path = tmp_path / "records.json"
    path.write_text(json.dumps(records))
    result = ingest.ingest(str(source), records=[str(path)], extensions=["mp4"])
    reasons = [r["reason"] for r in result.rejected_records]
    assert len(reasons) == 4 and not result.samples
    assert "quarantined" in reasons[0] and "escapes" in reasons[1]
    assert "not among the ingested clips" in reasons[2] and "missing field" in reasons[3]


def test_missing_source_is_a_clear_error(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text(
        f"ingest:\n  source: {tmp_path / 'nope'}\n  out: {tmp_path / 'o'}\n  records: []\n"
    )
    assert cli.main(["--params", str(params), "ingest"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_demo_records_round_trip_to_released_format(demo_store, tmp_path):
    from ebmrl.schema import dump_released

    dump_released(demo_store["result"].samples, tmp_path / "r.json")
    again = load_released(tmp_path / "r.json")
    assert [s.clip_id for s in again] == [s.clip_id for s in demo_store["result"].samples]


def test_limits_are_the_ingest_limits_section():
    info = video.VideoInfo(duration_s=2.0, fps=24.0, num_frames=48, width=320, height=240)
    assert ingest.check_limits(info, IngestLimitsSection()) is None
    assert ingest.check_limits(info, IngestLimitsSection(min_frames=49)) == (
        "absurd: 48 frame(s), fewer than limits.min_frames=49"
    )
    assert "duration 2 s outside" in ingest.check_limits(
        info, IngestLimitsSection(max_duration_s=1.5)
    )
    assert "size 320x240" in ingest.check_limits(info, IngestLimitsSection(max_side=300))
