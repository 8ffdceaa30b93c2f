"""vLLM rollouts with video (``grpo.use_vllm``).

vLLM needs CUDA, so it cannot run here: the engine is replaced by a recorder that
answers like ``vllm.LLM.generate`` (one output per request). Everything around it is
real: TRL's rollout path, our trainer, the frame store and the processor. What this
checks is the part ebmrl owns: every request reaches the engine with its own row's
frames and the frame rate our training passes assume.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import make_dataset, tiny_trainer

from ebmrl.models import load_vlm
from ebmrl.models.vlm import vision_pad_token_ids
from ebmrl.train.video_grpo import video_fps
from ebmrl.train.vllm_video import (
    SUPPRESS_BIAS,
    VideoLLM,
    VideoRolloutError,
    check_vllm_settings,
    prepare_colocated_engine,
    video_item,
    vllm_unavailable_reason,
    with_videos,
)

REPO = Path(__file__).resolve().parents[1]


def test_video_item_carries_the_metadata_vllm_qwen_requires():
    frames = np.zeros((6, 32, 64, 3), dtype=np.uint8)
    same, meta = video_item(frames, fps=3.0)
    assert same is frames
    assert meta == {
        "fps": 3.0,
        "duration": 2.0,
        "total_num_frames": 6,
        "frames_indices": [0, 1, 2, 3, 4, 5],
        "video_backend": "ebmrl",
        "do_sample_frames": False,
    }
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        video_item(np.zeros((32, 64, 3), dtype=np.uint8), fps=3.0)
    with pytest.raises(ValueError, match="fps must be positive"):
        video_item(frames, fps=0.0)


def test_requests_and_clips_pair_one_to_one():
    clip = video_item(np.zeros((2, 8, 8, 3), dtype=np.uint8), 2.0)
    rows = with_videos([{"prompt_token_ids": [1, 2]}], [clip])
    assert rows == [{"prompt_token_ids": [1, 2], "multi_modal_data": {"video": clip}}]
    with pytest.raises(VideoRolloutError, match="2 vLLM requests but 1 clips"):
        with_videos([{"prompt_token_ids": [1]}, {"prompt_token_ids": [2]}], [clip])
    with pytest.raises(VideoRolloutError, match="already carries images"):
        with_videos([{"prompt_token_ids": [1], "multi_modal_data": {"image": 0}}], [clip])


def test_unsupported_vllm_layouts_are_refused():
    check_vllm_settings("colocate", 1)
    server = ColocatedGeneration(RecordingEngine([0]))
    server.mode = "server"
    with pytest.raises(ValueError, match="vllm_mode 'server'"):
        prepare_colocated_engine(server, [7])
    with pytest.raises(ValueError, match="vllm_mode 'server' is not supported"):
        check_vllm_settings("server", 1)
    with pytest.raises(ValueError, match="vllm_tensor_parallel_size 2"):
        check_vllm_settings("colocate", 2)


# ------------------------------------------------------------- through the trainer
@dataclass
class Completion:
    token_ids: list[int]
    logprobs: list[dict[int, object]]


@dataclass
class RequestOutput:
    prompt_token_ids: list[int]
    outputs: list[Completion]


@dataclass
class RecordingEngine:
    """Answers ``generate`` like ``vllm.LLM`` does and keeps every request it got."""

    answer_ids: list[int]  # ordinary text tokens, ending with EOS
    requests: list[dict] = field(default_factory=list)

    def generate(self, prompts, sampling_params=None, use_tqdm=False):
        self.requests.extend(prompts)
        logprob = type("Logprob", (), {"logprob": -1.0})()
        tokens = self.answer_ids
        return [
            RequestOutput(
                p["prompt_token_ids"], [Completion(tokens, [{t: logprob} for t in tokens])]
            )
            for p in prompts
        ]


class ColocatedGeneration:
    """TRL's colocate ``VLLMGeneration.generate`` contract: one token request per row,
    sent to ``self.llm``; returns (prompt_ids, completion_ids, logprobs, token_ids)."""

    mode = "colocate"
    tensor_parallel_size = 1

    def __init__(self, llm):
        self.llm = llm
        self.generation_kwargs: dict = {}
        self.synced = 0

    def sync_weights(self):
        self.synced += 1

    def generate(self, prompts, images, num_generations, profiler=None):
        assert images is None  # video travels beside the token ids, not as images
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in prompts])
        completions = [o.outputs[0] for o in outputs]
        logprobs = [
            [[lp[t].logprob] for t, lp in zip(c.token_ids, c.logprobs, strict=True)]
            for c in completions
        ]
        return (
            [o.prompt_token_ids for o in outputs],
            [c.token_ids for c in completions],
            logprobs,
            None,
        )


def test_each_rollout_request_carries_its_rows_clip(tiny_models, frame_store, tmp_path):
    trainer, _, processor = tiny_trainer(tiny_models, frame_store, tmp_path)
    tokenizer = processor.tokenizer
    engine = RecordingEngine(tokenizer.encode("Eyes up.") + [tokenizer.eos_token_id])
    # What VideoGRPOTrainer.__init__ does when TRL has built a real colocated engine.
    trainer.use_vllm = True
    trainer.vllm_generation = ColocatedGeneration(engine)
    trainer._last_loaded_step = -1
    prepare_colocated_engine(trainer.vllm_generation, vision_pad_token_ids(processor))
    bias = trainer.vllm_generation.generation_kwargs["logit_bias"]
    assert bias == {t: SUPPRESS_BIAS for t in vision_pad_token_ids(processor)} and bias
    rows = [dict(row) for row in make_dataset(frame_store)]
    batch = [row for row in rows for _ in range(2)]  # two completions per prompt

    output = trainer._generate_and_score_completions(batch)

    assert trainer.vllm_generation.synced == 1
    assert len(engine.requests) == len(batch)
    video_token = processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    grid = output["ebmrl_video_grid_thw"]
    seconds = output["ebmrl_second_per_grid_ts"]
    for i, (request, row) in enumerate(zip(engine.requests, batch, strict=True)):
        frames, meta = request["multi_modal_data"]["video"]
        assert np.array_equal(frames, frame_store.frames(row["clip_id"]))
        # vLLM assumes the frame rate our log-prob passes used for M-RoPE time positions.
        assert meta["fps"] == pytest.approx(
            processor.video_processor.temporal_patch_size / float(seconds[i])
        )
        merge = processor.video_processor.merge_size**2
        placeholders = request["prompt_token_ids"].count(video_token)
        assert placeholders == int(grid[i].prod()) // merge
    assert trainer.vllm_generation.llm.videos is None  # cleared after the rollout
    assert output["completion_ids"].shape[0] == len(batch)


def test_video_fps_inverts_the_processors_time_step(tiny_models):
    _, processor = load_vlm(tiny_models["vlm"])
    frames = np.zeros((4, 56, 56, 3), dtype=np.uint8)
    encoded = processor(
        text=["<|vision_start|><|video_pad|><|vision_end|>"],
        videos=[frames],
        return_tensors="pt",
        do_sample_frames=False,
    )
    (fps,) = video_fps(processor, encoded["second_per_grid_ts"], 1)
    patch = processor.video_processor.temporal_patch_size
    assert patch / fps == pytest.approx(float(encoded["second_per_grid_ts"][0]))
    assert video_fps(processor, None, 2) == [2.0, 2.0]

    # vLLM's Qwen2.5-VL processor turns the metadata into a VideoMetadata (all keys but
    # do_sample_frames) and calls the same Hugging Face processor: same tokens, same time step.
    from transformers.video_utils import VideoMetadata

    _, meta = video_item(frames, fps)
    as_vllm = processor(
        text=["<|vision_start|><|video_pad|><|vision_end|>"],
        videos=[frames],
        video_metadata=[
            VideoMetadata(**{k: v for k, v in meta.items() if k != "do_sample_frames"})
        ],
        return_tensors="pt",
    )
    assert as_vllm["input_ids"].tolist() == encoded["input_ids"].tolist()
    assert as_vllm["video_grid_thw"].tolist() == encoded["video_grid_thw"].tolist()
    assert float(as_vllm["second_per_grid_ts"][0]) == pytest.approx(
        float(encoded["second_per_grid_ts"][0])
    )


def test_generate_without_clips_is_an_error():
    llm = VideoLLM(RecordingEngine([0]))
    with pytest.raises(VideoRolloutError, match="no clips"):
        llm.generate([{"prompt_token_ids": [1]}])


@pytest.mark.skipif(vllm_unavailable_reason() is None, reason="vLLM and a GPU are present")
@pytest.mark.slow
def test_use_vllm_without_vllm_fails_before_any_work(tmp_path):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["grpo"]["use_vllm"] = True
    params["grpo"]["init_model"] = str(tmp_path / "no-such-model")
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    done = subprocess.run(
        [sys.executable, "-m", "ebmrl.cli", "--params", str(path), "grpo", "--no-tracking"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "grpo.use_vllm:" in done.stderr
    assert "no-such-model" not in done.stderr  # refused before loading anything
