"""Deterministic demo data: rendered clips with known scene attributes, profiles, samples.

Stands in for film clips on machines without data: every clip is drawn procedurally
(background colour, lighting, a few figures, their motion, an optional fire-like danger
cue) and encoded as a real H.264 mp4 with PyAV, so the whole pipeline (decord decoding,
CLIP frame embeddings, VLM video input) runs on genuine video files. Because each scene's
attributes are known, the reference perceptions and replies are grounded in what the
frames show, which is what the rewards measure; each sample carries its clip's
attributes (``Sample.scene_attributes``), so the evaluation can check perceptions
against the ground truth.

Characters and lines are our own invention ("The Lantern Quarter"), written in the
released data format so the same importer reads them.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from ebmrl.io import atomic_path, write_json
from ebmrl.scene_words import scene_attributes
from ebmrl.schema import (
    CharacterProfile,
    ProfileBook,
    Sample,
    SceneAttributes,
    Turn,
    dump_profiles,
    dump_released,
)

UNIVERSE = "The Lantern Quarter"

COLOURS: dict[str, tuple[int, int, int]] = {
    "blue": (40, 80, 200),
    "green": (40, 160, 70),
    "red": (190, 50, 50),
    "yellow": (210, 190, 50),
    "grey": (130, 130, 130),
    "purple": (130, 60, 170),
}
FIGURE_COLOURS: dict[str, tuple[int, int, int]] = {
    "white": (240, 240, 240),
    "black": (20, 20, 20),
    "orange": (240, 140, 30),
    "cyan": (40, 220, 220),
}
MOTIONS = ("still", "left", "right", "approaching")
LIGHTING = ("bright", "dim")


@dataclass(frozen=True)
class Scene:
    """The ground truth of one rendered clip."""

    clip_id: str
    background: str
    lighting: str
    figures: int
    figure_colour: str
    motion: str
    danger: bool
    duration_s: float
    fps: int
    width: int
    height: int


PROFILES: dict[str, dict[str, object]] = {
    "Mira Vale": {
        "personality": "Steady, protective and blunt; the watch captain of the Quarter who "
        "keeps her head when others lose theirs.",
        "catchphrases": ["Eyes up, everyone.", "We hold the line.", "Talk later, move now."],
        "speech_style": "Short commands, plain words, calm even under pressure.",
        "relationships": "Mentor to Tobin, old friend of Sefa, trusts Juno's gadgets.",
        "strengths": "Courage, quick judgement, leadership.",
        "weaknesses": "Stubborn, hides her own fear.",
        "background": "Grew up lighting the lanterns of the Quarter and now leads its night watch.",
        "motivation": "Keep every street of the Quarter lit and safe.",
    },
    "Tobin Reed": {
        "personality": "A cheerful joker who cracks wise to hide nerves; turns brave, then "
        "jittery, when danger is real.",
        "catchphrases": ["Well, that's new.", "Nobody panic. I'm panicking for all of us."],
        "speech_style": "Quick, playful, lots of asides; drops the jokes when scared.",
        "relationships": "Apprentice of Mira, teases Juno, looks up to Sefa.",
        "strengths": "Humour, loyalty, fast feet.",
        "weaknesses": "Talks too much, easily startled.",
        "background": "A street performer who joined the watch on a dare.",
        "motivation": "Prove he is more than the Quarter's clown.",
    },
    "Sefa Oduya": {
        "personality": "Patient, observant and gently wry; the keeper of the old lantern house.",
        "catchphrases": ["Look before you leap.", "Light reveals, shadow teaches."],
        "speech_style": "Slow, measured, fond of images and small proverbs.",
        "relationships": "Old friend of Mira, grandmother figure to Tobin and Juno.",
        "strengths": "Wisdom, calm, sharp eyes.",
        "weaknesses": "Slow to act, distrusts new machines.",
        "background": "Has watched the Quarter for sixty years from her lantern house.",
        "motivation": "Teach the young ones to see clearly.",
    },
    "Juno Park": {
        "personality": "Curious, anxious and inventive; thinks out loud about how things work.",
        "catchphrases": ["Hang on, let me check.", "Technically, that should not happen."],
        "speech_style": "Precise, fast, full of numbers and hedges.",
        "relationships": "Builds gadgets for Mira, bickers with Tobin, learns from Sefa.",
        "strengths": "Ingenuity, attention to detail.",
        "weaknesses": "Overthinks, freezes when rushed.",
        "background": "A tinkerer who repairs the Quarter's lantern machines.",
        "motivation": "Understand everything that glows, moves or breaks.",
    },
}
USER_FAN = {
    "personality": "A curious visitor who cares about the characters and the scene.",
    "catchphrases": ["What just happened?", "Are you alright?"],
    "speech_style": "Casual and reactive, asks honest questions.",
    "relationships": "A friendly outsider the characters are happy to talk to.",
    "background": "Walked into the Quarter tonight and stayed to watch.",
    "motivation": "To understand what the characters see and feel.",
}

# Our own lines, keyed by persona and by whether the scene is dangerous.
REPLIES: dict[str, dict[bool, list[str]]] = {
    "Mira Vale": {
        True: [
            "Fire on the ground, get back now. Everyone behind me.",
            "Eyes up, that blaze is spreading. We move together, now.",
        ],
        False: [
            "All quiet in the {light} {colour} street. Keep walking, stay sharp.",
            "{count_word} of us and nothing wrong. We hold the line anyway.",
        ],
    },
    "Tobin Reed": {
        True: [
            "Okay, that is real fire. No jokes, just run!",
            "Nobody panic. That flame is getting bigger, so maybe panic a little.",
        ],
        False: [
            "Well, that's new. A {colour} street and nobody chasing us.",
            "Look at them {motion_phrase}. Quiet night, lucky us.",
        ],
    },
    "Sefa Oduya": {
        True: [
            "Look before you leap, child. The fire tells us to step away.",
            "Flames in the {light} street. Slowly now, away from the heat.",
        ],
        False: [
            "Light reveals, shadow teaches. This {colour} street is calm tonight.",
            "See how they are {motion_phrase}. Nothing to fear here.",
        ],
    },
    "Juno Park": {
        True: [
            "Hang on, that flicker is fire. Technically, we should leave right now.",
            "That heat pattern is spreading. We need distance, at least ten paces.",
        ],
        False: [
            "Technically, nothing is wrong. {count_word} figures, {light} light, {colour} walls.",
            "Hang on, let me check. They are {motion_phrase} and the street looks safe.",
        ],
    },
}
OPENERS = [
    "Did you see that?",
    "What do you make of this street?",
    "Is everything alright over there?",
    "Should we be worried?",
    "Tell me what you notice.",
]
COUNT_WORDS = {1: "One", 2: "Two", 3: "Three"}
MOTION_PHRASES = {
    "still": "standing still",
    "left": "walking to the left",
    "right": "walking to the right",
    "approaching": "coming closer",
}


def perception_text(scene: Scene) -> str:
    """Observable facts only, in the order the method asks for (event, objects, mood)."""
    people = f"{scene.figures} {scene.figure_colour} figure" + ("s" if scene.figures > 1 else "")
    event = (
        f"{people} {MOTION_PHRASES[scene.motion]} in a {scene.lighting} {scene.background} street."
    )
    objects = (
        "Orange flames flicker at the bottom of the frame."
        if scene.danger
        else ("No fire or threat is visible.")
    )
    mood = (
        "The atmosphere is dangerous and tense."
        if scene.danger
        else f"The atmosphere is safe and {'calm' if scene.lighting == 'bright' else 'quiet'}."
    )
    return f"{event} {objects} {mood}"


def think_text(scene: Scene, assistant: str) -> str:
    persona = PROFILES[assistant]["personality"].split(";")[0].split(",")[0].lower()
    stance = (
        "The fire is the urgent topic, so react to it and keep everyone safe."
        if scene.danger
        else "Nothing threatens us, so continue the conversation and comment on the scene."
    )
    return f"The scene is {'dangerous' if scene.danger else 'safe'}. {stance} Speak as someone {persona}."


def reply_text(scene: Scene, assistant: str, rng: np.random.Generator) -> str:
    options = REPLIES[assistant][scene.danger]
    template = options[int(rng.integers(len(options)))]
    return template.format(
        light=scene.lighting,
        colour=scene.background,
        count_word=COUNT_WORDS[scene.figures],
        motion_phrase=MOTION_PHRASES[scene.motion],
    )


# -------------------------------------------------------------------------- rendering
def render_frames(scene: Scene, seed: int) -> np.ndarray:
    """Frames of a scene as a ``(T, H, W, 3)`` uint8 array."""
    rng = np.random.default_rng(seed)
    count = max(1, round(scene.duration_s * scene.fps))
    h, w = scene.height, scene.width
    base = np.array(COLOURS[scene.background], dtype=np.float32)
    scale = 1.0 if scene.lighting == "bright" else 0.35
    background = np.broadcast_to(base * scale, (h, w, 3)).copy()
    # A darker floor band gives the scene some depth.
    background[int(h * 0.75) :] *= 0.6
    figure_rgb = np.array(FIGURE_COLOURS[scene.figure_colour], dtype=np.float32)
    starts = rng.uniform(0.15, 0.85, size=scene.figures) * w
    frames = np.empty((count, h, w, 3), dtype=np.uint8)
    for t in range(count):
        progress = t / max(1, count - 1)
        frame = background.copy()
        for i, x0 in enumerate(starts):
            size = 1.0 + (0.8 * progress if scene.motion == "approaching" else 0.0)
            dx = {"left": -0.3, "right": 0.3}.get(scene.motion, 0.0) * w * progress
            cx = int(np.clip(x0 + dx, 4, w - 5))
            body_h, body_w = int(h * 0.25 * size), max(2, int(w * 0.05 * size))
            foot = int(h * 0.78) + i
            frame[max(0, foot - body_h) : foot, max(0, cx - body_w) : cx + body_w] = figure_rgb
            head = max(2, body_w)
            top = max(0, foot - body_h - 2 * head)
            frame[top : top + 2 * head, max(0, cx - head) : cx + head] = figure_rgb * 0.9
        if scene.danger:
            flicker = 0.6 + 0.4 * rng.random()
            for j in range(6):
                fx = int((j + 0.5) * w / 6)
                flame_h = int(h * (0.15 + 0.15 * rng.random()) * flicker)
                frame[h - flame_h :, max(0, fx - w // 20) : fx + w // 20] = (
                    255,
                    120 + 60 * j % 100,
                    0,
                )
        frame += rng.normal(0, 3, size=frame.shape).astype(np.float32)
        frames[t] = np.clip(frame, 0, 255).astype(np.uint8)
    return frames


def encode_mp4(frames: np.ndarray, fps: int, path: Path) -> None:
    """Encode frames as H.264 mp4 (yuv420p), atomically."""
    import av

    with atomic_path(path) as tmp, av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.time_base = Fraction(1, fps)
        # libx264 reads past the end of rows whose chroma width is not a multiple of
        # 32 bytes: such clips differ from run to run, hence demo.width % 64 == 0.
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        # Single-threaded, fixed settings: the same seed gives byte-identical files.
        stream.options = {"crf": "23", "preset": "veryfast", "threads": "1"}
        stream.thread_count = 1
        for index, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            frame.pts = index
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


# ---------------------------------------------------------------------------- scenes
def make_scenes(
    num_clips: int,
    seed: int,
    width: int,
    height: int,
    fps: int,
    min_duration_s: float,
    max_duration_s: float,
) -> list[Scene]:
    rng = np.random.default_rng(seed)
    scenes = []
    for index in range(num_clips):
        duration = float(np.round(rng.uniform(min_duration_s, max_duration_s), 1))
        scenes.append(
            Scene(
                clip_id=f"clip_{index:04d}",
                background=str(rng.choice(list(COLOURS))),
                lighting=str(rng.choice(LIGHTING)),
                figures=int(rng.integers(1, 4)),
                figure_colour=str(rng.choice(list(FIGURE_COLOURS))),
                motion=str(rng.choice(MOTIONS)),
                # Every third clip is dangerous, so both kinds appear in any subset.
                danger=bool(index % 3 == 1),
                duration_s=duration,
                fps=fps,
                width=width,
                height=height,
            )
        )
    return scenes


def make_samples(
    scenes: list[Scene],
    num_sessions: int,
    samples_per_clip: int,
    seed: int,
    traced_fraction: float = 1.0,
) -> list[Sample]:
    """Role-play samples in sessions; each session is one conversation between two people.

    Only the first ``traced_fraction`` of the sessions carry a reference perception + think
    (``process``), as in the release, whose CoT file is a small part of the data: SFT
    learns from those, GRPO from every prompt, most of them new to the SFT model.
    """
    traced = math.ceil(traced_fraction * num_sessions)
    rng = np.random.default_rng(seed + 1)
    names = list(PROFILES)
    sessions = []
    for s in range(num_sessions):
        assistant = names[s % len(names)]
        user = "user_fan" if s % 2 == 0 else names[(s + 1) % len(names)]
        digest = hashlib.sha256(f"{seed}:{s}".encode()).hexdigest()[:16]
        sessions.append((digest, user, assistant))
    samples: list[Sample] = []
    history: dict[str, list[Turn]] = {sid: [] for sid, _, _ in sessions}
    problem_id = 1
    for index, scene in enumerate(scenes):
        session_id, user, assistant = sessions[index % num_sessions]
        for _ in range(samples_per_clip):
            opener = OPENERS[int(rng.integers(len(OPENERS)))]
            turns = [*history[session_id][-4:], Turn(speaker=user, utterance=opener)]
            reply = reply_text(scene, assistant, rng)
            order = len(history[session_id]) // 2 + 1
            samples.append(
                Sample(
                    sample_id=problem_id,
                    session_id=session_id,
                    segment_part=f"1_{index:03d}",
                    sub_sample_type=1,
                    sample_order=order,
                    series_total=None,
                    user=user,
                    assistant=assistant,
                    source=UNIVERSE,
                    generation_type="llm_api",
                    data_type="video",
                    problem_type="free-form",
                    dialogue=turns,
                    target=Turn(speaker=assistant, utterance=reply),
                    video=f"videos/{scene.clip_id}.mp4",
                    clip_id=scene.clip_id,
                    solution=f"<answer>{reply}</answer>",
                    process=(
                        Sample.trace(perception_text(scene), think_text(scene, assistant))
                        if index % num_sessions < traced
                        else None
                    ),
                    scene_attributes=SceneAttributes(**scene_attributes(scene)),
                )
            )
            history[session_id] += [turns[-1], Turn(speaker=assistant, utterance=reply)]
            problem_id += 1
    totals: dict[str, int] = {}
    for sample in samples:
        totals[sample.session_id] = max(totals.get(sample.session_id, 0), sample.sample_order or 0)
    return [s.model_copy(update={"series_total": totals[s.session_id]}) for s in samples]


def profile_book() -> ProfileBook:
    characters = {name: CharacterProfile(name=name, **fields) for name, fields in PROFILES.items()}
    return ProfileBook(
        movies={UNIVERSE: characters},
        global_user_profiles={"user_fan": CharacterProfile(name="user_fan", **USER_FAN)},
        character_tiers={UNIVERSE: {"main": list(PROFILES), "sub": []}},
        movie_aliases={"Lantern Quarter": UNIVERSE},
    )


def generate(
    out: str | Path,
    *,
    seed: int = 0,
    num_clips: int = 24,
    num_sessions: int = 6,
    samples_per_clip: int = 2,
    traced_fraction: float = 1.0,
    width: int = 128,
    height: int = 96,
    fps: int = 8,
    min_duration_s: float = 2.0,
    max_duration_s: float = 18.0,
    progress: bool = False,
) -> dict[str, Path]:
    """Write ``videos/*.mp4``, ``scenes.json``, ``profiles.json`` and ``samples.json``."""
    out = Path(out)
    scenes = make_scenes(num_clips, seed, width, height, fps, min_duration_s, max_duration_s)
    iterator = scenes
    if progress:
        from tqdm import tqdm

        iterator = tqdm(scenes, desc="render demo clips", unit="clip")
    videos = out / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    for index, scene in enumerate(iterator):
        encode_mp4(
            render_frames(scene, seed * 100_003 + index), scene.fps, videos / f"{scene.clip_id}.mp4"
        )
    wanted = {f"{s.clip_id}.mp4" for s in scenes}
    for stale in videos.glob("*.mp4"):
        if stale.name not in wanted:
            stale.unlink()
    write_json(out / "scenes.json", [asdict(s) for s in scenes])
    dump_profiles(profile_book(), out / "profiles.json")
    samples = make_samples(scenes, num_sessions, samples_per_clip, seed, traced_fraction)
    dump_released(samples, out / "samples.json")
    return {
        "videos": videos,
        "scenes": out / "scenes.json",
        "profiles": out / "profiles.json",
        "samples": out / "samples.json",
    }


def load_scenes(path: str | Path) -> list[Scene]:
    return [Scene(**row) for row in json.loads(Path(path).read_text(encoding="utf-8"))]
