"""The upgrade guard: the TRL / transformers methods our trainers override, as we found them.

``VideoGRPOTrainer`` and the SFT trainer override private methods of TRL's trainers
(and ``Trainer._load_from_checkpoint``). A TRL upgrade that renames, drops or reorders
a parameter of one of them would otherwise surface as a wrong keyword deep inside a
step, or, worse, as our override silently no longer being called with what it expects.
``check_overrides`` runs when a trainer is built, before any step: it compares the
parameter names of every method our class overrides with the ones recorded here for the
pinned TRL, and fails with a diagnosis naming each method that changed.

An override that is not recorded is an error too, so the table cannot fall behind the
code: add the base method's parameters (``inspect.signature``) when you override one.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping

# The TRL release these parameter lists were read from (pyproject.toml pins it).
TRL_VERSION = "1.16.0"

# Method name -> the parameter names of the TRL (or transformers) method it overrides.
OVERRIDDEN: Mapping[str, tuple[str, ...]] = {
    "_tokenize_prompts": ("self", "prompts"),
    "_generate_and_score_completions": ("self", "inputs"),
    "_calculate_rewards": ("self", "inputs", "prompts", "completions", "completion_ids_list"),
    "_generate_single_turn": (
        "self",
        "prompt_ids",
        "images",
        "multimodal_fields",
        "num_generations",
        "has_tool_images",
    ),
    "_get_per_token_logps_and_entropies": (
        "self",
        "model",
        "input_ids",
        "attention_mask",
        "logits_to_keep",
        "batch_size",
        "compute_entropy",
        "compute_aux_loss",
        "pixel_values",
        "image_grid_thw",
        "num_images",
        "pixel_attention_mask",
        "spatial_shapes",
        "num_tiles",
        "image_sizes",
        "token_type_ids",
        "mm_token_type_ids",
        "image_position_ids",
    ),
    "_compute_loss": ("self", "model", "inputs"),
    "_load_from_checkpoint": ("self", "resume_from_checkpoint", "model"),
    "_prepare_inputs": ("self", "generation_batch"),
    "training_step": ("self", "model", "inputs", "num_items_in_batch"),
}


class TrlContractError(RuntimeError):
    """The installed TRL no longer has the methods our trainers override, as recorded."""


def _parameter_names(function: object) -> tuple[str, ...]:
    return tuple(inspect.signature(function).parameters)


def _own_methods(ours: type) -> set[str]:
    """Names of the methods that ebmrl's own classes in ``ours``'s MRO define."""
    return {
        name
        for cls in ours.__mro__
        if cls.__module__.split(".")[0] == "ebmrl"
        for name, value in vars(cls).items()
        if callable(value) and name != "__init__"
    }


def overridden_methods(ours: type, base: type) -> list[str]:
    """The methods of ``base`` (or a class above it) that ebmrl's classes in ``ours``
    override, with the recorded ones that ``base`` no longer has."""
    own = _own_methods(ours)
    return sorted(name for name in own if hasattr(base, name) or name in OVERRIDDEN)


def check_overrides(ours: type, base: type) -> None:
    """Raise ``TrlContractError`` naming every overridden method of ``base`` whose
    parameters differ from ``OVERRIDDEN``, that ``base`` no longer has, or that
    ``OVERRIDDEN`` does not record."""
    problems = []
    for name in overridden_methods(ours, base):
        expected = OVERRIDDEN.get(name)
        if not hasattr(base, name):
            problems.append(
                f"{base.__name__} has no method {name} any more: "
                f"{ours.__name__}.{name} would never be called"
            )
            continue
        found = _parameter_names(getattr(base, name))
        if expected is None:
            problems.append(
                f"{ours.__name__}.{name} overrides {base.__name__}.{name}{found}, "
                "which ebmrl.train.trl_contract.OVERRIDDEN does not record"
            )
        elif found != expected:
            problems.append(
                f"{base.__name__}.{name} takes {found}; ebmrl's override was written for {expected}"
            )
    if problems:
        try:
            import trl

            installed = trl.__version__
        except Exception:  # noqa: BLE001 - the diagnosis should not fail on this
            installed = "unknown"
        raise TrlContractError(
            f"TRL {installed} is not the TRL {TRL_VERSION} that ebmrl's trainers were "
            "written against (pyproject.toml pins it):\n  " + "\n  ".join(problems)
        )
