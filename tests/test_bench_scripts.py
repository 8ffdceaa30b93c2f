"""The GPU check script must say so and exit cleanly on a machine without a GPU."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_grpo_step_exits_cleanly_without_a_gpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: run bench/gpu_grpo_step.py itself")
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu_grpo_step.py")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "no CUDA GPU" in result.stdout
