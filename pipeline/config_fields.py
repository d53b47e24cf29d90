"""The machinery under pipeline/config.py: a dataclass field's range or choices (check, choice lists read from
the module that implements them), coercion of YAML and --set values to the field's type, and errors that name
the closest valid key or value. It knows no section: config.py declares them."""
from __future__ import annotations

import ast
import dataclasses
import functools
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipeline.errors import UserError, closest


def check(default, *, ge=None, gt=None, le=None, lt=None, choices=None):
    """A dataclass field with its allowed range or choices, checked when a config is built."""
    rule = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt), ("choices", choices)) if v is not None}
    return field(default=default, metadata=rule)


@dataclass(frozen=True)
class Names:
    """A choice list declared once, as a literal tuple in the module that implements the choices, and read
    from that module's source rather than imported: the config is loaded before torch, and commands such
    as ``compress status`` never need it."""
    module: str
    name: str

    def __iter__(self):
        return iter(_declared(self.module, self.name))


@functools.cache
def _declared(module: str, name: str) -> tuple:
    """The literal ``name`` of ``module``'s source, parsed once per process (every config check iterates it)."""
    path = Path(__file__).resolve().parent.parent.joinpath(*module.split(".")).with_suffix(".py")
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return tuple(ast.literal_eval(node.value))
    raise LookupError(f"{module} declares no {name}")


def all_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key of the dataclass ``cls``, sections expanded."""
    keys = []
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            keys.extend(all_keys(hint, f"{prefix}{f.name}."))
        else:
            keys.append(prefix + f.name)
    return keys


def unknown_key(key: str, root: type) -> UserError:
    keys = all_keys(root)
    candidates = keys + sorted({k.split(".")[0] for k in keys if "." in k})  # sections too
    near = closest(key, candidates, cutoff=0.5)
    hint = f"; did you mean '{near}'?" if near else "; run 'compress config' to list valid keys"
    return UserError(f"unknown config key '{key}'{hint}")


def coerce(key: str, value, hint):
    """Check ``value`` against the field type ``hint``; ints are accepted where floats are expected."""
    origin = typing.get_origin(hint)
    if origin in (list, tuple):
        (inner, *_) = typing.get_args(hint) or (object,)
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config key '{key}' expects a list, got {value!r}")
        return tuple(coerce(key, v, inner) for v in value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str) and re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+", value):
        return float(value)  # 1e-3: YAML 1.1 (PyYAML) reads exponents without a dot as strings
    if hint is str and isinstance(value, bool):
        return "on" if value else "off"  # YAML 1.1 reads a bare on/off as a boolean
    if hint is str and isinstance(value, (int, float)):  # YAML read it as a number: 0123 as 83, 1.10 as 1.1
        raise UserError(f"config key '{key}' expects text, got the number {value!r}; put the value in quotes "
                        f"(in YAML: '...'; on the command line: --set \"{key}='...'\")")
    if hint is object or (isinstance(value, hint) and not (hint is int and isinstance(value, bool))):
        return value
    raise UserError(f"config key '{key}' expects {hint.__name__}, got {value!r}")


_RULES = {"ge": (lambda v, b: v >= b, ">="), "gt": (lambda v, b: v > b, ">"),
          "le": (lambda v, b: v <= b, "<="), "lt": (lambda v, b: v < b, "<")}


def check_range(key: str, value, rule: dict) -> None:
    """Raise if ``value`` (or any item of a list value) breaks the field's declared range or choices, or a list
    names an item twice (an artifact built and timed twice, a method trained twice)."""
    if isinstance(value, tuple) and len(set(value)) < len(value):
        twice = next(v for v in value if value.count(v) > 1)
        raise UserError(f"config key '{key}' lists {twice!r} twice; give each at most once")
    for item in value if isinstance(value, tuple) else (value,):
        if "choices" in rule and item not in rule["choices"]:
            valid = ", ".join(map(str, rule["choices"]))
            near = closest(item, rule["choices"], cutoff=0.5)
            hint = f" (did you mean '{near}'?)" if near else ""
            raise UserError(f"config key '{key}' = {item!r} is not allowed{hint}; use one of: {valid}")
        if any(n in rule and not ok(item, rule[n]) for n, (ok, _) in _RULES.items()):
            allowed = " and ".join(f"{sym} {rule[n]}" for n, (_, sym) in _RULES.items() if n in rule)
            raise UserError(f"config key '{key}' = {item!r} is out of range; it must be {allowed}")


def build(cls: type, values: dict, prefix: str = "", root: type | None = None):
    """``cls`` from the nested dict ``values``, every value coerced and checked; ``root`` is the outermost class,
    whose keys an unknown key is matched against."""
    root = root or cls
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    names = set(fields)
    kwargs = {}
    for key, value in values.items():
        full = prefix + str(key)
        if key not in names:
            raise unknown_key(full, root)
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            value = {} if value is None else value  # a section whose keys are all commented out
            if not isinstance(value, dict):
                raise UserError(f"config section '{full}' must be a mapping, got {value!r}")
            kwargs[key] = build(hint, value, full + ".", root)
        else:
            kwargs[key] = coerce(full, value, hint)
            check_range(full, kwargs[key], fields[key].metadata)
    return cls(**kwargs)


def merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not a text file; give a YAML config file") from exc
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({exc.__class__.__name__}); fix the file") from exc
    if not isinstance(data, dict):
        raise UserError(f"{path}: the top level must be a mapping of sections")
    return data


def parse_set(item: str) -> dict:
    """``teacher.epochs=3`` -> ``{"teacher": {"epochs": 3}}``; the value is read as YAML."""
    if "=" not in item:
        raise UserError(f"--set '{item}' must look like section.key=value")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, int) and not isinstance(value, bool) and raw.strip().lstrip("+") != str(value):
        value = raw.strip()  # 010 or 0123 (YAML 1.1 reads them as octal 8 and 83): kept as written
    nested: dict = value
    for part in reversed(key.strip().split(".")):
        nested = {part: nested}
    return nested
