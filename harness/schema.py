"""Strict, validated config sections: unknown keys are errors and numbers may be expressions."""

from __future__ import annotations

import re
import types
import typing
from typing import Any, ClassVar, Union

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from harness.errors import ConfigError, allowed, did_you_mean, shown

#: the keys of a run spec that decide what it computes (the store reads them without the config models)
#: (`repeat` numbers the runs of one spec with the same seed, for the noise floor: grid `repeats: N`)
RUN_KEYS = ["model", "data", "train", "eval", "tracking", "objective", "method", "seed", "repeat"]
from harness.expr import ExprError, evaluate


def _is_numeric(annotation: Any) -> bool:
    if annotation in (int, float):
        return True
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return bool(args) and all(a in (int, float) for a in args)
    if origin is typing.Annotated:
        return _is_numeric(typing.get_args(annotation)[0])
    return False


def _kind(annotation: Any) -> str:
    """How a numeric field's type reads in a message: `an integer`, `a number`, `an integer or null`."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    if typing.get_origin(annotation) is typing.Annotated:
        return _kind(args[0])
    kind = "an integer" if all(a is int for a in args) else "a number"
    return kind + (" or null" if type(None) in typing.get_args(annotation) else "")


def resolve_expressions(cls: type[BaseModel], data: dict) -> tuple[dict, dict[str, str]]:
    """`data` with each numeric field given as a string evaluated as arithmetic over the section's other
    numeric fields (`alpha: 2*r`), and {field: why} for the strings that are not such an expression
    (left out of the returned data)."""
    numeric = {n: f for n, f in cls.model_fields.items() if _is_numeric(f.annotation)}
    keywords = getattr(cls, "keywords", {})
    names: dict[str, float] = {}
    for name in numeric:
        value = data.get(name, cls.model_fields[name].default)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            names[name] = value
    out, bad = dict(data), {}
    for name, info in numeric.items():
        value = data.get(name)
        if not isinstance(value, str) or value.strip() in keywords.get(name, ()):
            continue
        try:
            out[name] = evaluate(value, {k: v for k, v in names.items() if k != name})
        except ExprError as exc:
            del out[name]
            kind = _kind(info.annotation) + "".join(f" or `{w}`" for w in keywords.get(name, ()))
            if _WORD.match(value.strip()) and value.strip() not in names:  # `four`: a word, not a formula
                bad[name] = (f"must be {kind} (or arithmetic over this section's numbers, such as `2*r`), "
                             f"but got {value!r}{did_you_mean(value.strip(), names).replace(' Did', '; did')}")
            else:
                bad[name] = f"must be {kind}: {exc}"
    return out, bad


_WORD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Section(BaseModel):
    """A config section: unknown keys are rejected; numeric fields accept arithmetic
    expressions over the section's other numeric fields (e.g. `alpha: 2*r`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    #: numeric fields that also take a word (`micro_batch: auto`), which the section's own validator reads
    keywords: ClassVar[dict[str, tuple[str, ...]]] = {}

    @model_validator(mode="before")
    @classmethod
    def _resolve_expressions(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        out, bad = resolve_expressions(cls, data)
        if bad:
            name, why = next(iter(bad.items()))
            raise ValueError(f"`{name}`: {why}")
        return out


def validate_section(cls: type[BaseModel], data: Any, *, file: str, prefix: str) -> BaseModel:
    """Validate `data` as `cls`, turning pydantic errors into a ConfigError naming each field.

    Every field is checked even when another failed: a string that is no expression (`micro_batch: four`)
    is reported as a type error of its field beside the other fields' problems, in the order the keys
    were given.

    Raises:
        ConfigError: listing every problem, with "did you mean" for misspelt keys.
    """
    problems: list[tuple[str, str, str]] = []
    given = data
    if isinstance(data, dict) and issubclass(cls, Section):
        data, bad = resolve_expressions(cls, data)
        problems = [(file, f"{prefix}.{name}" if prefix else name, why) for name, why in bad.items()]
    try:
        model = cls.model_validate(data)
    except ValidationError as exc:
        skipped = {p[1] for p in problems}
        problems += [p for p in problems_from(exc, cls, file=file, prefix=prefix) if p[1] not in skipped]
    if not problems:
        return model
    order = {str(k): i for i, k in enumerate(given)} if isinstance(given, dict) else {}

    def position(problem: tuple[str, str, str]) -> int:
        rest = problem[1][len(prefix) + 1:] if prefix else problem[1]
        return order.get(rest.split(".")[0].split("[")[0], len(order))

    raise ConfigError(sorted(problems, key=position))


def problems_from(exc: ValidationError, cls: type[BaseModel], *, file: str, prefix: str) -> list[tuple[str, str, str]]:
    """Convert a pydantic ValidationError into (file, dotted field, message) triples."""
    problems = []
    for err in exc.errors(include_url=False):
        loc = [str(p) for p in err["loc"]]
        field = ".".join([prefix, *loc]) if prefix else ".".join(loc)
        if err["type"] == "extra_forbidden":
            owner = _model_at(cls, loc[:-1])
            names = list(owner.model_fields) if owner else []
            msg = f"unknown key `{loc[-1]}`.{did_you_mean(loc[-1], names)} {allowed(names)}"
        else:
            msg = err["msg"]
            if msg.startswith("Value error, "):
                msg = msg[len("Value error, "):]
            if err["type"] not in ("value_error", "assertion_error", "missing"):
                msg += f", but got {shown(err.get('input'))}"
        problems.append((file, field, msg))
    return problems


def _model_at(cls: type[BaseModel], loc: list[str]) -> type[BaseModel] | None:
    for part in loc:
        field = cls.model_fields.get(part)
        if field is None:
            return None
        ann = field.annotation
        candidates = [ann, *typing.get_args(ann)]
        nxt = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if nxt is None:
            return None
        cls = nxt
    return cls
