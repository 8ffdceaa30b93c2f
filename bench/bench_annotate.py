"""Annotation throughput against `ebmrl serve` with an injected latency L.

N requests at concurrency C should take about N*L/C (the model's own time is tiny);
prints measured/ideal for each C. Usage: python bench/bench_annotate.py [N] [L]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    import torch

    torch.set_num_threads(1)
    from ebmrl.backends import ChatRequest, GenerationClient, map_concurrent
    from ebmrl.backends.local import LocalVLMBackend
    from ebmrl.backends.openai_http import OpenAIHTTPBackend
    from ebmrl.edge.http_server import ChatServer, Faults
    from ebmrl.models import tiny

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 32
    latency = float(sys.argv[2]) if len(sys.argv) > 2 else 0.25
    model = Path("models/tiny/qwen2_5_vl")
    if not model.is_dir():
        model = tiny.build_qwen2_5_vl(Path(tempfile.mkdtemp()) / "vlm")
    backend = LocalVLMBackend(str(model))
    frames = np.random.default_rng(0).integers(0, 255, (4, 56, 56, 3), dtype=np.uint8)
    requests = [
        ChatRequest.simple(f"Describe clip {i}.", frames=frames, max_tokens=4, seed=i)
        for i in range(n)
    ]
    backend.generate(requests[0])  # load and warm up
    print(f"N={n} requests, injected latency L={latency}s, 4 frames each")
    print(f"{'C':>4} {'measured s':>11} {'ideal s':>8} {'measured/ideal':>15}")
    with ChatServer(backend, model_name="tiny", faults=Faults(latency_s=latency)) as server:
        for concurrency in (1, 2, 4, 8, 16):
            client = GenerationClient(OpenAIHTTPBackend(server.url, "tiny"))
            started = time.perf_counter()
            outcomes = map_concurrent(
                client.generate, requests, concurrency=concurrency, progress=False
            )
            elapsed = time.perf_counter() - started
            assert not any(o.error for o in outcomes)
            ideal = n * latency / concurrency
            print(f"{concurrency:>4} {elapsed:>11.2f} {ideal:>8.2f} {elapsed / ideal:>15.2f}")


if __name__ == "__main__":
    main()
