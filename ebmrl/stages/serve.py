"""``ebmrl serve``: an OpenAI-compatible chat server for a local VLM (not a DVC stage).

Defaults come from ``models`` in params.yaml (``--model`` overrides ``models.vlm``).
Fault injection (``--fail-rate``, ``--fail-status``, ``--latency-s``) exists for retry
tests and throughput benchmarks.
"""

from __future__ import annotations

import argparse
import signal
import sys

from ebmrl.config import Params

HELP = "serve a local VLM over an OpenAI-compatible /v1/chat/completions endpoint"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model folder or hub id (default: models.vlm)")
    parser.add_argument("--model-name", help="name reported by the API (default: --model)")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default: %(default)s)")
    parser.add_argument(
        "--port", type=int, default=8000, help="port, 0 for any free one (default: %(default)s)"
    )
    parser.add_argument(
        "--fail-rate",
        type=float,
        default=0.0,
        help="fraction of requests answered with --fail-status",
    )
    parser.add_argument(
        "--fail-status",
        type=int,
        default=503,
        help="status of injected failures (default: %(default)s)",
    )
    parser.add_argument(
        "--latency-s", type=float, default=0.0, help="seconds added to every request"
    )
    parser.add_argument("--fault-seed", type=int, default=0, help="seed of the failure draws")
    parser.add_argument(
        "--max-tokens-limit", type=int, default=4096, help="largest max_tokens accepted"
    )
    parser.add_argument("--verbose", action="store_true", help="log every request")


def _stop(signum: int, frame: object) -> None:
    raise SystemExit(0)


def run(params: Params, args: argparse.Namespace) -> int:
    from ebmrl.backends.local import LocalVLMBackend
    from ebmrl.serve import ChatServer, Faults

    models = params.models
    model = args.model or models.vlm
    try:
        faults = Faults(
            fail_rate=args.fail_rate,
            fail_status=args.fail_status,
            latency_s=args.latency_s,
            seed=args.fault_seed,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    backend = LocalVLMBackend(
        model,
        dtype=models.dtype,
        device=models.device,
        attn_implementation=models.attn_implementation,
    )
    server = ChatServer(
        backend,
        model_name=args.model_name or str(model),
        host=args.host,
        port=args.port,
        faults=faults,
        max_tokens_limit=args.max_tokens_limit,
        verbose=args.verbose,
    )
    signal.signal(signal.SIGTERM, _stop)
    # Tests and scripts read this line to learn the port (useful with --port 0).
    print(f"serving {server.model_name} on {server.url}", flush=True)
    try:
        server.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.server_close()
        backend.close()
    return 0
