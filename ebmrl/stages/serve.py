"""``ebmrl serve``: an OpenAI-compatible chat server for a local VLM (not a DVC stage).

Defaults come from ``models`` in params.yaml (``--model`` overrides ``models.vlm``).
The model is loaded before the server listens, so a wrong model fails at once (exit 2).
Requests are bounded (``--max-body-mb``: 413; a prompt over the model's context: 400;
``--max-queue`` completions at once, more: 503). Fault injection (``--fail-rate``,
``--fail-status``, ``--latency-s``) exists for retry tests and throughput benchmarks.
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
    # Defaults: ebmrl.edge.http_server (16 MiB, 8, 64), not imported here to keep the CLI light.
    parser.add_argument(
        "--max-body-mb", type=float, help="largest request body in MiB; larger: 413 (16)"
    )
    parser.add_argument(
        "--max-queue", type=int, help="completions admitted at once, running or waiting (8)"
    )
    parser.add_argument(
        "--max-connections", type=int, help="open connections, one thread each (64)"
    )
    parser.add_argument("--verbose", action="store_true", help="log every request")


def _stop(signum: int, frame: object) -> None:
    raise SystemExit(0)


def run(params: Params, args: argparse.Namespace) -> int:
    from ebmrl.backends.local import LocalVLMBackend
    from ebmrl.edge import http_server
    from ebmrl.edge.http_server import ChatServer, Faults

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
    backend.load()  # a model that cannot load fails here (ModelLoadError: exit 2)
    try:
        server = ChatServer(
            backend,
            model_name=args.model_name or str(model),
            host=args.host,
            port=args.port,
            faults=faults,
            max_tokens_limit=args.max_tokens_limit,
            max_body_bytes=http_server.MAX_BODY_BYTES
            if args.max_body_mb is None
            else int(args.max_body_mb * (1 << 20)),
            max_queue=http_server.MAX_QUEUE if args.max_queue is None else args.max_queue,
            max_connections=http_server.MAX_CONNECTIONS
            if args.max_connections is None
            else args.max_connections,
            verbose=args.verbose,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
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
