"""``ebmrl`` command line: one subcommand per pipeline stage (what dvc.yaml runs).

Parameters are validated in full before any stage starts, so a typo in params.yaml
fails in milliseconds with the key named, not an hour into a run. Every stage shares one
error contract (``ebmrl.edge.exit_codes``): a wrong input exits 2 and a network or storage
hiccup 75, each with one ``error:`` line naming the file or key and no traceback;
anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

from ebmrl.config import DEFAULT_PARAMS_PATH, ConfigError, load
from ebmrl.edge.exit_codes import (
    EXIT_INVALID,
    EXIT_TRANSIENT,
    error_line,
    exit_code,
    injected_fault,
    refused_here,
)

# subcommand -> module under ebmrl.stages
STAGES: dict[str, str] = {
    "tiny-models": "tiny_models",
    "demo-data": "demo_data",
    "ingest": "ingest",
    "frames": "frames",
    "annotate": "annotate",
    "synthesize": "synthesize",
    "sft": "sft",
    "grpo": "grpo",
    "videoqa": "videoqa",
    "evaluate": "evaluate",
    "report": "report",
    "serve": "serve",  # a command, not a DVC stage
}


def _build_parser() -> tuple[argparse.ArgumentParser, dict[str, object]]:
    parser = argparse.ArgumentParser(
        prog="ebmrl", description="EBM-RL pipeline stages (see dvc.yaml for the DAG)."
    )
    parser.add_argument(
        "--params",
        default=str(DEFAULT_PARAMS_PATH),
        help="parameters file (default: %(default)s)",
    )
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    check = sub.add_parser(
        "check-params",
        help="validate params.yaml, print its settings against the authors' and exit",
    )
    check.add_argument(
        "--out",
        help="also write this file when the parameters are valid (the check_params stage's "
        "output: its content never changes, so no stage after it reruns because of it)",
    )
    check.set_defaults(module=None)
    outputs = sub.add_parser("outputs", help="list the pipeline outputs declared in dvc.yaml")
    outputs.add_argument("--dvc-file", default="dvc.yaml")
    outputs.set_defaults(module="outputs")
    use_profile = sub.add_parser(
        "use-profile",
        help="write a profile's keys (profiles/<name>.yaml, e.g. paper) into the params file",
    )
    use_profile.add_argument("profile", help="profile name under profiles/, or a YAML path")
    use_profile.set_defaults(module="use-profile")
    modules = {}
    for command, module_name in STAGES.items():
        module = importlib.import_module(f"ebmrl.stages.{module_name}")
        stage_parser = sub.add_parser(command, help=module.HELP, description=module.HELP)
        module.add_arguments(stage_parser)
        stage_parser.set_defaults(module=command)
        modules[command] = module
    return parser, modules


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def print_outputs(dvc_file: str) -> int:
    """Where each stage's outputs are, so a user knows what the demo produced."""
    import yaml

    try:
        stages = yaml.safe_load(Path(dvc_file).read_text(encoding="utf-8"))["stages"]
    except (OSError, KeyError, TypeError, yaml.YAMLError) as exc:
        print(f"error: cannot read {dvc_file}: {exc}", file=sys.stderr)
        return 2
    print("Pipeline outputs:")
    for name, stage in stages.items():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind, []) or []:
                out = Path(next(iter(entry)) if isinstance(entry, dict) else entry)
                state = f"{_size(out) / 1e6:8.2f} MB" if out.exists() else "   (missing)"
                print(f"  {name:14s} {kind:7s} {state}  {out.resolve()}")
    return 0


def use_profile(params_path: str, profile: str) -> int:
    """Write a profile's keys into the params file (comments kept), after validating."""
    from ebmrl.edge.profiles import apply_profile

    try:
        changed = apply_profile(params_path, profile)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    if not changed:
        print(f"{params_path}: already has every value of profile {profile!r}")
        return 0
    print(f"{params_path}: profile {profile!r} set {len(changed)} key(s):")
    for key in changed:
        print(f"  {key}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser, modules = _build_parser()
    args = parser.parse_args(argv)
    try:
        params = load(args.params)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    if args.module is None:
        from ebmrl.fidelity import fidelity_table

        print(f"{args.params}: OK")
        print(fidelity_table(params))
        if args.out:
            from ebmrl.io import atomic_write_text

            atomic_write_text(args.out, "params: OK\n")
        return 0
    if args.module == "outputs":
        return print_outputs(args.dvc_file)
    if args.module == "use-profile":
        return use_profile(args.params, args.profile)
    refused = refused_here(args.command)
    if refused:
        print(f"error: {refused}", file=sys.stderr)
        return EXIT_INVALID
    fault = injected_fault(args.command)
    if fault:
        print(f"error: {fault}", file=sys.stderr)
        return EXIT_TRANSIENT
    try:
        return int(modules[args.module].run(params, args) or 0)
    except Exception as exc:
        # Bad inputs (2) and network or remote-store failures (75, which an orchestrator
        # retries) are named in one line; anything else keeps its traceback.
        code = exit_code(exc)
        if code is None:
            raise
        print(error_line(exc), file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
