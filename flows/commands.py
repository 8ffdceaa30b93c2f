"""Run ``dvc`` and ``ebmrl`` commands, stream their output, and classify failures.

No Prefect here: the flows pass a line callback (their run logger) and turn a
``CommandFailed`` into a retry or a final failure by its ``transient`` flag.

Classification (why retry only some failures):

- a stage's own exit code, as DVC reports it ("exited with N"): ``EXIT_TRANSIENT`` (75)
  or death by a signal (preempted or killed worker) is transient; any other code is the
  stage's verdict on its inputs or code (``EXIT_INVALID``, a traceback) and is permanent.
- no stage exit code (DVC itself failed): the repository lock held by another DVC
  process and network / remote-storage errors are transient; everything else (a missing
  dependency, an unknown stage, a bad dvc.yaml) is permanent.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ebmrl.edge.exit_codes import EXIT_INVALID, EXIT_TRANSIENT

TAIL_LINES = 40  # output lines kept for the failure message

_STAGE_EXIT = re.compile(r"exited with (-?\d+)")
_TRANSIENT_DVC = re.compile(
    r"unable to acquire lock|is busy, it is being blocked by"
    r"|could not connect|connection (?:refused|reset|aborted)|connect timeout"
    r"|timed out|temporarily unavailable|service unavailable|bad gateway"
    r"|gateway time-?out|too many requests|slow ?down|internal ?error"
    r"|\b50[0234]\b",
    re.IGNORECASE,
)
_SIGNAL_EXITS = {137, 143}  # 128 + SIGKILL / SIGTERM, as a shell reports them


class CommandFailed(Exception):
    """A command exited non-zero. ``transient``: worth retrying later."""

    def __init__(
        self,
        what: str,
        returncode: int,
        tail: Sequence[str],
        transient: bool,
        reason: str = "",
    ):
        self.what = what
        self.returncode = returncode
        self.tail = list(tail)
        self.transient = transient
        kind = "transient: will be retried" if transient else "permanent: not retried"
        reason = reason or f"exit code {returncode}"
        last = "\n".join(self.tail[-15:])
        super().__init__(f"{what} failed ({reason}; {kind}):\n{last}")


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    tail: tuple[str, ...]


def bin_dir() -> Path:
    """The folder of this interpreter's scripts (``dvc``, ``ebmrl``, ``prefect``)."""
    return Path(sys.executable).parent


def command_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a child command: ours, our venv first on PATH, plus ``extra``.

    DVC runs stage commands (``ebmrl ...``) through the shell, so PATH must find them.
    """
    env = dict(os.environ)
    env["PATH"] = f"{bin_dir()}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("PYTHONUNBUFFERED", "1")  # lines reach the log as they are written
    env.update(extra or {})
    return env


def run_streaming(
    args: Sequence[str],
    cwd: str | Path,
    *,
    env: Mapping[str, str] | None = None,
    on_line: Callable[[str], None] = print,
) -> CommandResult:
    """Run ``args``; hand every output line (stdout and stderr merged) to ``on_line``.

    Progress bars redraw with carriage returns: only the last state of a line is sent.
    """
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    with subprocess.Popen(
        list(args),
        cwd=str(cwd),
        env=dict(env) if env is not None else command_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        errors="replace",
        bufsize=1,
    ) as proc:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip("\n").rsplit("\r", 1)[-1].rstrip()
            if line:
                tail.append(line)
                on_line(line)
        returncode = proc.wait()
    return CommandResult(returncode, tuple(tail))


def stage_exit_code(tail: Sequence[str]) -> int | None:
    """The stage command's exit code as DVC reports it, if the stage ran and failed."""
    for line in reversed(tail):
        if line.startswith("ERROR:") and (match := _STAGE_EXIT.search(line)):
            return int(match.group(1))
    return None


def is_transient(result: CommandResult, *, through_dvc: bool = True) -> bool:
    """Whether a failed command is worth retrying later (see the module docstring)."""
    code = stage_exit_code(result.tail) if through_dvc else result.returncode
    if code is not None:
        return code == EXIT_TRANSIENT or code < 0 or code in _SIGNAL_EXITS
    errors = [line for line in result.tail if line.startswith("ERROR:")] or list(result.tail)
    return any(_TRANSIENT_DVC.search(line) for line in errors[-5:])


def run_checked(
    what: str,
    args: Sequence[str],
    cwd: str | Path,
    *,
    env: Mapping[str, str] | None = None,
    on_line: Callable[[str], None] = print,
    through_dvc: bool = True,
) -> CommandResult:
    """``run_streaming``; raise ``CommandFailed`` (transient or not) on a non-zero exit."""
    result = run_streaming(args, cwd, env=env, on_line=on_line)
    if result.returncode != 0:
        transient = is_transient(result, through_dvc=through_dvc)
        stage_code = stage_exit_code(result.tail) if through_dvc else None
        reason = (
            f"the stage command exited with {stage_code}"
            if stage_code is not None
            else f"{Path(args[0]).name} exited with {result.returncode}"
        )
        raise CommandFailed(what, result.returncode, result.tail, transient, reason)
    return result


# ------------------------------------------------------------------ what to run
def dvc(*args: str) -> list[str]:
    return [str(bin_dir() / "dvc"), *args]


def repro_stage_command(stage: str, *, force: bool = False, pull: bool = False) -> list[str]:
    """Reproduce one stage, not its upstream (the flow runs those first, in order)."""
    args = ["repro", "--single-item", stage]
    if force:
        args.append("--force")
    if pull:
        args.append("--pull")  # fetch cached outputs from the remote instead of recomputing
    return dvc(*args)


def check_params_command() -> list[str]:
    return [str(bin_dir() / "ebmrl"), "check-params"]


def stage_order(repo: str | Path) -> list[str]:
    """The stages of dvc.yaml in an order that runs every stage after its upstream.

    Ties keep dvc.yaml's order, so the order is stable from run to run.
    """
    import networkx as nx
    from dvc.repo import Repo

    root = Path(repo).resolve()

    def address(stage) -> str:  # as `dvc repro` takes it from the repository root
        dvc_file = Path(stage.path).resolve()
        if dvc_file.parent == root:
            return stage.name
        return f"{dvc_file.relative_to(root)}:{stage.name}"

    with Repo(str(root)) as dvc_repo:
        graph = dvc_repo.index.graph  # edges point from a stage to the stages it needs
        position = {address(stage): i for i, stage in enumerate(dvc_repo.index.stages)}
        ordered = nx.lexicographical_topological_sort(
            graph.reverse(copy=True), key=lambda s: f"{position[address(s)]:06d}"
        )
        return [address(stage) for stage in ordered]


def stage_upstream(repo: str | Path) -> dict[str, set[str]]:
    """Each stage's upstream stages (every stage it needs, directly or not), by address."""
    import networkx as nx
    from dvc.repo import Repo

    root = Path(repo).resolve()
    with Repo(str(root)) as dvc_repo:
        graph = dvc_repo.index.graph  # edges point from a stage to the stages it needs

        def address(stage) -> str:
            dvc_file = Path(stage.path).resolve()
            if dvc_file.parent == root:
                return stage.name
            return f"{dvc_file.relative_to(root)}:{stage.name}"

        return {address(s): {address(u) for u in nx.descendants(graph, s)} for s in graph.nodes}


def ready_stages(
    order: Sequence[str], upstream: Mapping[str, set[str]], finished: set[str], started: set[str]
) -> list[str]:
    """The stages of ``order`` not started yet whose upstream stages among ``order`` have
    all finished: what may run now, side by side (stages with no path between them)."""
    selected = set(order)
    return [
        stage
        for stage in order
        if stage not in started and (upstream.get(stage, set()) & selected) <= finished
    ]


def changed_stages(repo: str | Path) -> set[str]:
    """The stages ``dvc status`` says must run: a dependency, param or output differs
    from ``dvc.lock`` (or is missing). A stage whose upstream has yet to run is not in it
    until that upstream has run: ask again after each stage that ran."""
    args = dvc("status", "--json")
    result = subprocess.run(
        args, cwd=str(repo), env=command_env(), capture_output=True, text=True, errors="replace"
    )
    if result.returncode != 0:
        lines = tuple((result.stdout + result.stderr).splitlines()[-TAIL_LINES:])
        failed = CommandResult(result.returncode, lines)
        raise CommandFailed("dvc status", result.returncode, lines, is_transient(failed))
    return set(json.loads(result.stdout or "{}"))


def default_remote(repo: str | Path) -> str | None:
    """The name of the DVC default remote (``core.remote``), or None when none is set."""
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo:
        return dvc_repo.config.get("core", {}).get("remote") or None


def only_known_stages(requested: Sequence[str], known: Sequence[str]) -> list[str]:
    """``requested`` in pipeline order; unknown names are an error naming them."""
    unknown = [s for s in requested if s not in known]
    if unknown:
        raise CommandFailed(
            "stage selection",
            EXIT_INVALID,
            [f"unknown stage(s): {', '.join(unknown)}; dvc.yaml has: {', '.join(known)}"],
            transient=False,
        )
    return [s for s in known if s in requested]
