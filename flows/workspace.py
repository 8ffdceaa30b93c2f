"""A stage in its own workspace, on a worker that shares nothing with the pipeline but
git and the DVC remote (another machine, a fresh GPU node).

The pipeline describes its state as an ``Origin``: its exact git commit (uncommitted
changes are refused: the worker could not see them), the text of its ``dvc.lock`` (the
hashes of the upstream outputs it has built since that commit) and its DVC remote. The
worker clones that commit into a folder of its own, writes that ``dvc.lock``, reproduces
the one stage (``dvc repro --single-item --pull``: the stage's inputs and DVC's run
cache come from the remote) and pushes its outputs with their run-cache entry
(``dvc push --run-cache``). The pipeline then restores the stage in its own workspace by
the same ``dvc repro --single-item --pull``, which DVC satisfies from the run cache, with
stage commands refused (``RESTORE_ONLY_ENV``) so that nothing is recomputed there.

No Prefect here (as ``flows.commands``): the flows pass a line callback.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from ebmrl.edge.exit_codes import EXIT_INVALID, RESTORE_ONLY_ENV
from flows.commands import CommandFailed, command_env, dvc, repro_stage_command, run_checked

REMOTE_NAME = "pipeline"  # the remote's name in a workspace's .dvc/config.local


class DirtyWorkspace(CommandFailed):
    """The pipeline's checkout has changes git does not hold: a remote worker cannot
    reproduce them."""


@dataclass(frozen=True)
class Origin:
    """What a worker needs to rebuild the pipeline's state (JSON-serialisable)."""

    git_url: str
    commit: str
    lock: str  # the pipeline's dvc.lock, "" when it has none yet
    remote_url: str
    remote_endpoint: str | None = None  # an S3-compatible server's endpointurl

    def as_parameters(self) -> dict[str, str | None]:
        return asdict(self)


def _git(repo: str | Path, *args: str, strip: bool = True) -> str:
    result = subprocess.run(
        ["git", *args], cwd=str(repo), capture_output=True, text=True, errors="replace"
    )
    if result.returncode != 0:
        raise CommandFailed(
            f"git {' '.join(args)}",
            result.returncode,
            (result.stdout + result.stderr).splitlines(),
            transient=False,
        )
    return result.stdout.strip() if strip else result.stdout


def dvc_managed_paths(repo: str | Path) -> set[str]:
    """dvc.lock and every output of dvc.yaml (git-tracked metrics among them): the
    pipeline itself changes them, and they travel through ``dvc.lock`` and the remote."""
    from dvc.repo import Repo

    root = Path(repo).resolve()
    paths = {"dvc.lock"}
    with Repo(str(root)) as dvc_repo:
        for stage in dvc_repo.index.stages:
            for out in stage.outs:
                paths.add(Path(out.fs_path).resolve().relative_to(root).as_posix())
    return paths


def _only_dvc_ignores(repo: Path, gitignore: str, managed: set[str]) -> bool:
    """Whether a changed .gitignore only gained the entries DVC adds for outputs."""
    folder = Path(gitignore).parent.as_posix()
    entries = {"/" + Path(path).name for path in managed if Path(path).parent.as_posix() == folder}
    try:
        before = set(_git(repo, "show", f"HEAD:{gitignore}").splitlines())
    except CommandFailed:  # not in HEAD
        before = set()
    now = set((repo / gitignore).read_text().splitlines())
    return before <= now and (now - before) <= entries


def uncommitted_changes(repo: str | Path) -> list[str]:
    """Paths git reports as changed or untracked (not ignored), DVC's own changes aside
    (dvc.lock, the outputs, the .gitignore entries it adds for them)."""
    root = Path(repo).resolve()
    managed = dvc_managed_paths(root)
    status = _git(root, "status", "--porcelain", "-z", "--untracked-files=all", strip=False)
    # -z: "XY path" entries, NUL-separated, names unquoted; a rename adds its old name.
    changed, entries = [], iter(status.split("\0"))
    for entry in entries:
        if entry:
            changed.append(entry[3:])
            if entry[0] in "RC":
                next(entries, None)
    return [
        path
        for path in changed
        if path not in managed
        and not any(path.startswith(f"{m}/") for m in managed)
        and not (
            Path(path).name == ".gitignore"
            and (root / path).is_file()
            and _only_dvc_ignores(root, path, managed)
        )
    ]


def default_remote_settings(repo: str | Path) -> tuple[str, str | None]:
    """URL and endpoint of the DVC default remote; an error naming it when none is set."""
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo:
        config = dvc_repo.config
        name = config.get("core", {}).get("remote")
        if not name:
            raise CommandFailed(
                "stage workspaces",
                EXIT_INVALID,
                [
                    "a stage on another worker exchanges data through the DVC remote, and "
                    f"{repo} has no default one: dvc remote add -d NAME s3://bucket/path"
                ],
                transient=False,
            )
        remote = config["remote"][name]
        return remote["url"], remote.get("endpointurl")


def pipeline_origin(
    repo: str | Path, git_url: str | None = None, allow_dirty: bool = False
) -> Origin:
    """The pipeline's state for a worker: refuses uncommitted changes unless
    ``allow_dirty`` (a local-only run, where the worker reads the same files)."""
    if not allow_dirty:
        dirty = uncommitted_changes(repo)
        if dirty:
            shown = ", ".join(dirty[:10]) + (" ..." if len(dirty) > 10 else "")
            raise DirtyWorkspace(
                "stage workspaces",
                EXIT_INVALID,
                [
                    f"{repo} has uncommitted changes that a remote worker cannot see: "
                    f"{shown}. Commit them (or pass allow_dirty for a local-only run)."
                ],
                transient=False,
            )
    url = git_url or _remote_git_url(repo)
    remote_url, endpoint = default_remote_settings(repo)
    lock = Path(repo, "dvc.lock")
    return Origin(
        git_url=url,
        commit=_git(repo, "rev-parse", "HEAD"),
        lock=lock.read_text() if lock.is_file() else "",
        remote_url=remote_url,
        remote_endpoint=endpoint,
    )


def _remote_git_url(repo: str | Path) -> str:
    """``origin``'s URL, else the checkout itself (reachable from this machine only)."""
    try:
        return _git(repo, "remote", "get-url", "origin")
    except CommandFailed:
        return str(Path(repo).resolve())


def stage_environment(origin: Origin, environ: Mapping[str, str]) -> dict[str, str]:
    """What a stage in a workspace adds to its environment: its training checkpoints go
    under the DVC remote (``<remote>/checkpoints``) unless ``EBMRL_CHECKPOINTS_URI`` is
    set, and an S3 endpoint, if the remote has one and the environment none."""
    from ebmrl.train.checkpoint_sync import URI_ENV

    env = {URI_ENV: environ.get(URI_ENV) or f"{origin.remote_url.rstrip('/')}/checkpoints"}
    if origin.remote_endpoint and not environ.get("AWS_ENDPOINT_URL"):
        env["AWS_ENDPOINT_URL"] = origin.remote_endpoint
    return env


def prepare_workspace(origin: Origin, folder: str | Path, on_line: Callable[[str], None]) -> Path:
    """Clone ``origin.commit`` into ``folder`` (a fresh one), with the pipeline's
    dvc.lock and its DVC remote (endpoint in config.local; credentials: the environment)."""
    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)  # a retry on the same worker starts from the commit again
    folder.parent.mkdir(parents=True, exist_ok=True)
    git_env = command_env()
    for args, cwd in (
        (["git", "clone", "--quiet", "--no-checkout", origin.git_url, str(folder)], folder.parent),
        (["git", "checkout", "--quiet", "--detach", origin.commit], folder),
    ):
        run_checked(f"git {args[1]}", args, cwd, env=git_env, on_line=on_line, through_dvc=False)
    if origin.lock:
        (folder / "dvc.lock").write_text(origin.lock)
    remote = [(dvc("remote", "add", "--local", "-d", "-f", REMOTE_NAME, origin.remote_url))]
    if origin.remote_endpoint:
        remote.append(
            dvc("remote", "modify", "--local", REMOTE_NAME, "endpointurl", origin.remote_endpoint)
        )
    for args in remote:
        run_checked("dvc remote", args, folder, on_line=on_line, through_dvc=False)
    on_line(f"workspace {folder} at commit {origin.commit[:12]} ({origin.git_url})")
    return folder


_TRANSFER = re.compile(
    r"fetched|pulled|pushed|up to date|is cached - skipping|Running stage|didn't change",
    re.IGNORECASE,
)


def reproduce_and_push(
    workspace: str | Path,
    stage: str,
    on_line: Callable[[str], None],
    env: Mapping[str, str] | None = None,
    force: bool = False,
) -> dict[str, list[str]]:
    """The worker's part: reproduce ``stage`` (inputs and run cache pulled from the
    remote), then push its outputs and run-cache entry. Returns DVC's lines about what
    was pulled, run and pushed (for the stage's Prefect artifact)."""
    summary: dict[str, list[str]] = {"repro": [], "push": []}
    for part, args in (
        ("repro", repro_stage_command(stage, force=force, pull=True)),
        ("push", dvc("push", "--run-cache", stage)),
    ):
        result = run_checked(
            f"{'stage' if part == 'repro' else 'dvc push'} {stage}",
            args,
            workspace,
            env=command_env(env),
            on_line=on_line,
        )
        summary[part] = [line for line in result.tail if _TRANSFER.search(line)]
    pushed = push_uncached_outputs(workspace, stage)
    if pushed:
        on_line(f"{pushed} uncached output(s) of {stage} pushed for its run-cache entry")
        summary["push"].append(f"{pushed} uncached output(s) pushed")
    return summary


def push_uncached_outputs(workspace: str | Path, stage: str) -> int:
    """Push the files of the stage's ``cache: false`` outputs (its git-tracked metrics):
    its run-cache entry names them, and DVC's run cache stored them in the local cache,
    but ``dvc push --run-cache`` does not send them, so the pipeline could not restore
    the stage from that entry."""
    from dvc.repo import Repo

    with Repo(str(workspace)) as repo:
        # Addressed from the workspace's root (DVC resolves a bare name from the cwd).
        target = stage if ":" in stage else f"dvc.yaml:{stage}"
        (found,) = repo.stage.collect(str(Path(repo.root_dir) / target))
        infos = [out.hash_info for out in found.outs if not out.use_cache and out.hash_info]
        if not infos:
            return 0
        result = repo.cloud.push(infos)
        if result.failed:
            raise CommandFailed(
                f"dvc push {stage}",
                1,
                [
                    f"could not push the uncached outputs of {stage}: {sorted(map(str, result.failed))}"
                ],
                transient=True,
            )
        return len(infos)


def restore_from_run_cache(repo: str | Path, stage: str, on_line: Callable[[str], None]) -> None:
    """The pipeline's part: the stage's outputs and ``dvc.lock`` entry from the remote's
    run cache; the stage command is refused, so a missing entry fails instead of
    recomputing the stage here."""
    run_checked(
        f"restore {stage}",
        repro_stage_command(stage, pull=True),
        repo,
        env=command_env({RESTORE_ONLY_ENV: stage}),
        on_line=on_line,
    )
