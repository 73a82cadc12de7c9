"""Reading params.yaml, turning its sections into config objects, and applying profiles.

Stage scripts read params.yaml with ``load_params()`` and turn each section
into the library's config dataclass with ``section_config()``: one way from
params to code. A config's field names are the section's keys, so an unknown
key is a typo (or a parameter nobody reads) and raises ``ParamsError``.
Library code never reads params.yaml itself.

A profile is a YAML file in ``profiles/`` whose keys override the same keys of
``params.yaml``. It can be applied in place (so ``dvc repro`` and
``dvc exp show`` see exactly the values that ran) or turned into ``-S``
arguments for ``dvc exp run``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Iterator, TypeVar

import yaml

PARAMS_FILE = "params.yaml"
PROFILES_DIR = "profiles"

Config = TypeVar("Config")


class ParamsError(ValueError):
    """A params section does not fit its config: a key the config does not have."""


def load_params(path: str | os.PathLike = PARAMS_FILE) -> dict[str, Any]:
    """The whole params file as a dict."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: params file not found (run from the project folder, or pass its path)")
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def section_config(cls: type[Config], section: Mapping[str, Any] | None, name: str, **extra: Any) -> Config:
    """``cls`` (a dataclass) from the params section ``name``, plus ``extra`` values from elsewhere.

    Every key of ``section`` must be a field of ``cls``; an unknown one raises
    :class:`ParamsError` naming ``<name>.<key>``. A field whose default is
    itself a dataclass (e.g. ``sample.watermark``) is built from its nested
    section the same way. Range checks stay with the config (``__post_init__``).
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    section = dict(section or {})
    unknown = sorted(set(section) - set(fields))
    if unknown:
        raise ParamsError(f"params.yaml {name} has unknown key(s) {', '.join(unknown)}")
    for key, value in section.items():
        nested = _dataclass_default(fields[key])
        if nested is not None and isinstance(value, Mapping):
            section[key] = section_config(nested, value, f"{name}.{key}")
    return cls(**section, **extra)


def _dataclass_default(field: dataclasses.Field) -> type | None:
    """The dataclass type of a field whose default (factory) is a dataclass instance, else None."""
    if field.default_factory is not dataclasses.MISSING:
        default = field.default_factory()
    elif field.default is not dataclasses.MISSING:
        default = field.default
    else:
        return None
    return type(default) if dataclasses.is_dataclass(default) else None


def load_profile(name: str, profiles_dir: str | os.PathLike = PROFILES_DIR) -> dict[str, Any]:
    path = Path(profiles_dir) / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in Path(profiles_dir).glob("*.yaml"))
        raise FileNotFoundError(f"profile '{name}' not found: {path} does not exist (known: {', '.join(known) or 'none'})")
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def flatten(overrides: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Dotted keys of a nested dict: {"a": {"b": 1}} -> ("a.b", 1)."""
    for key, value in overrides.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from flatten(value, dotted + ".")
        else:
            yield dotted, value


def set_args(overrides: dict[str, Any]) -> list[str]:
    """The overrides as ``dvc exp run`` arguments: ["-S", "a.b=1", ...]."""
    args = []
    for key, value in flatten(overrides):
        args += ["-S", f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"]
    return args


def _keep_string(value: Any) -> Any:
    """Quote strings that YAML 1.1 readers (PyYAML, DVC) would read as something else, e.g. ``no``."""
    from ruamel.yaml.scalarstring import DoubleQuotedScalarString

    if isinstance(value, str) and yaml.safe_load(value) != value:
        return DoubleQuotedScalarString(value)
    if isinstance(value, float):
        return _yaml11_float(value)
    return value


def _yaml11_float(value: float) -> Any:
    """``value`` as a float that YAML 1.1 readers see as one: ``2.0e-05``, not ``2e-05`` (a string to PyYAML)."""
    from ruamel.yaml import YAML

    text = repr(value)
    mantissa, e, exponent = text.partition("e")
    if e and "." not in mantissa:
        text = f"{mantissa}.0e{exponent}"
    return YAML().load(text)


def apply_profile(name: str, params_path: str | os.PathLike = PARAMS_FILE,
                  profiles_dir: str | os.PathLike = PROFILES_DIR) -> list[str]:
    """Write a profile's values into params.yaml, keeping its comments and order.

    Returns the dotted keys that were set. Unknown keys are an error, so a typo
    in a profile cannot silently add a parameter nobody reads.
    """
    from ruamel.yaml import YAML

    rt = YAML()
    rt.preserve_quotes = True
    with open(params_path, encoding="utf-8") as f:
        doc = rt.load(f)
    changed = []
    for dotted, value in flatten(load_profile(name, profiles_dir)):
        *parents, leaf = dotted.split(".")
        node = doc
        for part in parents:
            if part not in node:
                raise KeyError(f"profile '{name}': {dotted} is not a key of {params_path}")
            node = node[part]
        if leaf not in node:
            raise KeyError(f"profile '{name}': {dotted} is not a key of {params_path}")
        node[leaf] = _keep_string(value)
        changed.append(dotted)
    tmp = Path(f"{params_path}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        rt.dump(doc, f)
    os.replace(tmp, params_path)
    return changed
