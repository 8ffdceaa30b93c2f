"""Thin stage entry points: read one section of params.yaml, call the core, write outputs.

Each module has ``add_arguments(parser)`` and ``run(params, args) -> int``; ``ebmrl.cli``
wires them up as ``ebmrl <stage>`` commands, which dvc.yaml calls.
"""
