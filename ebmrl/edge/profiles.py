"""Parameter profiles: overlays of params.yaml kept in ``profiles/<name>.yaml``.

A profile lists only the keys it changes (the paper-scale models and training recipe,
a smoke-test size for CI, ...). ``apply_profile`` writes those keys into params.yaml in
place, keeping every comment and the order of the file, after validating the result:
a profile with an unknown key or a bad value changes nothing and names the key.
The stages never know which profile is active: they read params.yaml, one code path.

Mappings merge key by key; any other value (a number, a string, a list) replaces the
old one whole.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ebmrl.config import ConfigError, _UniqueKeyLoader, load, validate

PROFILES_DIR = Path("profiles")  # relative to the folder of params.yaml


def profile_path(name_or_path: str | Path, profiles_dir: str | Path = PROFILES_DIR) -> Path:
    """``paper`` -> ``<profiles_dir>/paper.yaml``; a path ending in .yaml is used as is."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        candidate = path
    else:
        candidate = Path(profiles_dir) / f"{name_or_path}.yaml"
    if not candidate.is_file():
        known = sorted(p.stem for p in Path(profiles_dir).glob("*.yaml"))
        raise ConfigError(
            str(candidate),
            [
                (
                    "<file>",
                    f"no such profile (known in {profiles_dir}/: {', '.join(known) or 'none'})",
                )
            ],
        )
    return candidate


def read_overlay(path: str | Path) -> dict[str, Any]:
    """The profile's keys as a plain mapping (duplicate keys and bad YAML are errors)."""
    path = Path(path)
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), [("<yaml>", f"invalid YAML: {exc}")]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), [("<root>", f"must be a mapping, got {type(data).__name__}")])
    return data


def merge(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """A new mapping: ``base`` with ``overlay`` written over it (mappings merge, rest replaces)."""
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def changed_keys(
    base: Mapping[str, Any], overlay: Mapping[str, Any], prefix: str = ""
) -> list[str]:
    """Dotted paths of the overlay's values that differ from ``base``."""
    changed = []
    for key, value in overlay.items():
        path = f"{prefix}{key}"
        old = base.get(key) if isinstance(base, Mapping) else None
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            changed += changed_keys(old, value, f"{path}.")
        elif old != value or key not in base:
            changed.append(path)
    return changed


def _round_trip_yaml():
    from ruamel.yaml import YAML

    # The layout `dvc exp run -S` writes (ruamel's defaults: lists at their key's indent,
    # None as an empty value), so that neither tool reformats what the other wrote.
    rt = YAML()
    rt.preserve_quotes = True
    rt.width = 4096
    return rt


def _split_comment(token: Any) -> tuple[str, str]:
    """A key's comment token as (end-of-line comment, what follows the line).

    ruamel keeps ``"# note\n\n# next section"`` as one token after a value: the first
    line is the value's own comment, the rest (blank lines, the next block's comment)
    belongs to the layout of the file.
    """
    if token is None:
        return "", ""
    head, _, rest = token.value.partition("\n")
    return head, rest


def _merge_comment(target: Any, key: Any, source: Any) -> None:
    """The profile's own comment for ``key`` (if any) replaces the file's; layout stays."""
    from ruamel.yaml.error import CommentMark
    from ruamel.yaml.tokens import CommentToken

    old = (target.ca.items.get(key) or [None] * 4)[2]
    new = (source.ca.items.get(key) or [None] * 4)[2]
    old_eol, old_rest = _split_comment(old)
    new_eol, _ = _split_comment(new)
    eol = new_eol or old_eol
    if not eol and not old_rest:
        target.ca.items.pop(key, None)
        return
    column = (new if new_eol else old).column if (new_eol or old) else 0
    token = CommentToken(f"{eol}\n{old_rest}", CommentMark(column), None)
    entry = list(target.ca.items.get(key) or [None] * 4)
    entry[2] = token
    target.ca.items[key] = entry


def _drop_trailing_layout(node: Any) -> None:
    """Remove the blank lines and comments that follow ``node`` in the profile's file
    (ruamel hangs them on its last key, however deep); end-of-line comments stay."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq
    from ruamel.yaml.error import CommentMark
    from ruamel.yaml.tokens import CommentToken

    if isinstance(node, CommentedMap) and node:
        last: Any = list(node)[-1]
    elif isinstance(node, CommentedSeq) and node:
        last = len(node) - 1
    else:
        return
    entry = node.ca.items.get(last)
    if entry and entry[2] is not None:
        eol, _ = _split_comment(entry[2])
        entry[2] = CommentToken(f"{eol}\n", CommentMark(entry[2].column), None) if eol else None
    _drop_trailing_layout(node[last])


def _block_style(node: Any) -> None:
    """Lists and mappings in block style, all the way down: the layout DVC writes (a flow
    list written where the file has a block one also confuses ruamel's comments)."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    if isinstance(node, CommentedMap | CommentedSeq):
        node.fa.set_block_style()
        for child in node.values() if isinstance(node, CommentedMap) else node:
            _block_style(child)


def _write_into(target: Any, overlay: Any) -> None:
    """Write a round-trip-loaded profile into the round-trip-loaded params, in place.

    Values keep the profile's spelling (``3.0e-6``) and take DVC's block layout; comments
    and blank lines of params.yaml stay where they are.
    """
    import copy

    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    for key, value in overlay.items():
        old = target.get(key)
        if isinstance(value, CommentedMap) and isinstance(old, CommentedMap):
            _write_into(old, value)
            continue
        value = copy.deepcopy(value)
        _block_style(value)
        if isinstance(value, CommentedSeq) and value:
            _drop_trailing_layout(value[-1])
        if isinstance(value, CommentedSeq) and isinstance(old, CommentedSeq) and value and old:
            # Blank lines / comments after a block list hang on its last item: keep the file's.
            value.ca.items.pop(len(value) - 1, None)
            if len(old) - 1 in old.ca.items:
                value.ca.items[len(value) - 1] = old.ca.items[len(old) - 1]
            value.ca.end = copy.deepcopy(old.ca.end)
        target[key] = value
        _merge_comment(target, key, overlay)


def apply_profile(params_path: str | Path, profile: str | Path) -> list[str]:
    """Write the profile's keys into params.yaml; return the dotted keys that changed.

    The merged parameters are validated before anything is written, so a bad profile
    leaves params.yaml untouched and raises ``ConfigError`` naming the key.
    """
    params_path = Path(params_path)
    # Profiles live in profiles/ beside params.yaml (the repository root).
    source = profile_path(profile, params_path.parent / PROFILES_DIR)
    overlay = read_overlay(source)
    load(params_path)  # the file itself must be valid before it is changed
    base = yaml.load(params_path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506
    base = base or {}
    try:
        validate(merge(base, overlay), source=f"{params_path} + {source}")
    except ConfigError as exc:
        raise ConfigError(str(source), exc.problems) from None
    changes = changed_keys(base, overlay)
    if not changes:
        return []
    rt = _round_trip_yaml()
    document = rt.load(params_path.read_text(encoding="utf-8"))
    _write_into(document, rt.load(source.read_text(encoding="utf-8")))
    buffer = io.StringIO()
    rt.dump(document, buffer)
    # The text must mean exactly the merged parameters (a guard on the comment-keeping
    # writer): otherwise nothing is written.
    expected = merge(base, overlay)
    try:
        written = yaml.load(buffer.getvalue(), Loader=_UniqueKeyLoader)  # noqa: S506
    except yaml.YAMLError:
        written = None
    if written != expected:
        raise ConfigError(str(source), [("<write>", "could not write the profile faithfully")])
    # Atomic: write beside, then rename (a crash never leaves half a params.yaml).
    fd, tmp = tempfile.mkstemp(dir=params_path.parent, prefix=".params.", suffix=".yaml")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(buffer.getvalue())
        os.replace(tmp, params_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return changes
