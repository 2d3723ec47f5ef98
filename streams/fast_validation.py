"""A fast yes for the landing: msgspec mirrors of the event models, derived from them.

Validating an interaction with pydantic from its raw bytes costs ~20 µs, most of it
building Python objects; msgspec decodes the same record into a typed ``Struct`` in ~6.
The landing asks the mirror first: when it accepts a record, pydantic would have accepted
it too, with the same ``event_id`` and ``created_at``; when it does not (a broken record,
or one it cannot vouch for), pydantic decides, and its verdict and message stand. So the
rules and the dead letters' reasons are pydantic's, and nothing here is a second copy of
the schema: each mirror is generated from its model at import (CONVENTIONS 15).

How the mirror stays no looser than the model:
- types and constraints are translated one for one (``str``/``int``/``float``/``bool``,
  ``Literal``, unions, ``list``/``dict``, ``Any``, nested TypedDicts and models;
  ``min_length``/``max_length``/``ge``/``gt``/``le``/``lt``); msgspec decodes strictly
  (no coercion), and forbids unknown fields where the model does;
- an ``AwareDatetime`` is read as a string of the one canonical RFC 3339 form
  (``2026-11-30T23:04:05.123456Z`` or a ``±hh:mm`` offset, 0-6 fraction digits), parsed by
  ``datetime.fromisoformat``; any other spelling goes to pydantic;
- the model's own ``mode="after"`` validators run on the mirror (nested parts answer
  ``in``, ``[]`` and ``get`` like the dicts pydantic builds); any exception sends the
  record to pydantic;
- anything else (a before/wrap or field validator, a pattern, an alias, a lax model, a
  type not listed above) leaves that model without a mirror: pydantic validates all of
  its records.
Where msgspec is stricter than pydantic (``NaN``, ``1.0`` for a ``Literal[1, 2]``, a
number beyond float range) the record only takes the slower path. tests/test_fast_validation.py
runs valid and broken records through both and checks the mirror never says yes alone.
"""

from __future__ import annotations

import copy
import logging
import types
import typing
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal, Union

import annotated_types
from pydantic import AwareDatetime, BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from typing_extensions import NotRequired, Required, is_typeddict

try:
    import msgspec
except ImportError:  # pragma: no cover - declared in pyproject; without it pydantic validates everything
    msgspec = None

log = logging.getLogger(__name__)

#: The one spelling of an aware timestamp the mirror accepts (what pydantic and
#: ``datetime.isoformat`` write); ASCII digits only.
CANONICAL_DATETIME = r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?(Z|[+-][0-9]{2}:[0-9]{2})\Z"

_CONSTRAINTS = {annotated_types.MinLen: "min_length", annotated_types.MaxLen: "max_length",
                annotated_types.Ge: "ge", annotated_types.Gt: "gt", annotated_types.Le: "le", annotated_types.Lt: "lt"}
_SCALARS = (str, int, float, bool, type(None))


class Unsupported(TypeError):
    """A model uses something the mirror cannot reproduce exactly: it gets no mirror."""


if msgspec is not None:
    class _Part(msgspec.Struct, kw_only=True, gc=False):
        """A nested part, answering like the dict pydantic builds for a TypedDict (a key
        left out is absent; one sent as null is present). Decoded from JSON, a mirror is a
        tree and cannot be part of a cycle: ``gc=False`` keeps the cyclic collector (~10% of
        the decode while the control plane holds many objects) out of it."""

        def __contains__(self, key: str) -> bool:
            return getattr(self, key, msgspec.UNSET) is not msgspec.UNSET

        def __getitem__(self, key: str):
            value = getattr(self, key, msgspec.UNSET)
            if value is msgspec.UNSET:
                raise KeyError(key)
            return value

        def get(self, key: str, default=None):
            value = getattr(self, key, msgspec.UNSET)
            return default if value is msgspec.UNSET else value


def _meta(metadata: list) -> dict:
    out = {}
    for m in metadata:
        if isinstance(m, FieldInfo):  # Annotated[T, Field(...)]: its constraints
            out.update(_meta(m.metadata))
            continue
        name = _CONSTRAINTS.get(type(m))
        if name is None:
            raise Unsupported(f"constraint {m!r}")
        out[name] = getattr(m, name)
    return out


class _Builder:
    def __init__(self) -> None:
        self.structs: dict[type, type] = {}

    def type_of(self, tp, metadata: list = ()) -> Any:
        """The msgspec type for annotation ``tp`` with pydantic constraints ``metadata``."""
        origin = typing.get_origin(tp)
        if origin is Annotated:
            inner, *extra = typing.get_args(tp)
            return self.type_of(inner, [*metadata, *extra])
        if origin in (Union, types.UnionType):
            args = typing.get_args(tp)
            branches = [a for a in args if a is not type(None)]
            if metadata and len(branches) != 1:
                raise Unsupported(f"constraints on a union {tp!r}")
            converted = [self.type_of(a, metadata if a is not type(None) else ()) for a in args]
            return Union[tuple(converted)]
        meta = _meta(list(metadata))
        if tp is AwareDatetime:  # read as a canonical string by `struct_of`, at the top level only
            raise Unsupported("a datetime below the top level")
        if origin is Literal:
            base: Any = tp
        elif tp in _SCALARS or tp is Any:
            base = tp
        elif origin is list:
            (item,) = typing.get_args(tp)
            base = list[self.type_of(item)]
        elif origin is dict:
            key, value = typing.get_args(tp)
            if key is not str:
                raise Unsupported(f"dict keys of {key!r}")
            base = dict[str, self.type_of(value)]
        elif is_typeddict(tp):
            base = self.typeddict(tp)
        elif isinstance(tp, type) and issubclass(tp, BaseModel):
            base, _, after = self.struct_of(tp, top=False)
            if after:  # its validators would have to run on each nested value
                raise Unsupported(f"a nested {tp.__name__} with validators")
        else:
            raise Unsupported(f"type {tp!r}")
        return Annotated[base, msgspec.Meta(**meta)] if meta else base

    def typeddict(self, td) -> type:
        if td in self.structs:
            return self.structs[td]
        config = getattr(td, "__pydantic_config__", {}) or {}
        if not config.get("strict"):
            raise Unsupported(f"{td.__name__} is not strict")
        hints = typing.get_type_hints(td, include_extras=True)
        total = getattr(td, "__total__", True)
        fields = []
        for name, hint in hints.items():
            required = total
            origin = typing.get_origin(hint)
            if origin in (NotRequired, typing.NotRequired):
                required, hint = False, typing.get_args(hint)[0]
            elif origin in (Required, typing.Required):
                required, hint = True, typing.get_args(hint)[0]
            tp = self.type_of(hint)
            fields.append((name, tp) if required else (name, Union[tp, msgspec.UnsetType], msgspec.UNSET))
        struct = msgspec.defstruct(f"{td.__name__}Mirror", fields, bases=(_Part,), kw_only=True,
                                   forbid_unknown_fields=config.get("extra") == "forbid")
        self.structs[td] = struct
        return struct

    def struct_of(self, model: type[BaseModel], top: bool = True) -> tuple[type, tuple[str, ...], tuple[Callable, ...]]:
        """The mirror of ``model``, its datetime fields (read as strings), its after-validators."""
        config = model.model_config
        if not config.get("strict"):
            raise Unsupported(f"{model.__name__} is not strict")
        decorators = model.__pydantic_decorators__
        if decorators.field_validators or decorators.validators or decorators.root_validators:
            raise Unsupported(f"{model.__name__} has field validators")
        after = []
        for d in decorators.model_validators.values():
            if d.info.mode != "after" or not callable(d.func) or isinstance(d.func, (classmethod, staticmethod)):
                raise Unsupported(f"{model.__name__}.{d.cls_var_name} is a {d.info.mode} validator")
            after.append(d.func)
        fields, datetimes = [], []
        for name, info in model.model_fields.items():
            if info.alias not in (None, name) or info.validation_alias not in (None, name):
                raise Unsupported(f"{model.__name__}.{name} has an alias")
            if info.annotation is AwareDatetime:
                if not top or info.metadata:
                    raise Unsupported(f"{model.__name__}.{name}: a datetime below the top level or constrained")
                tp: Any = Annotated[str, msgspec.Meta(pattern=CANONICAL_DATETIME)]
                datetimes.append(name)
            else:
                tp = self.type_of(info.annotation, info.metadata)
            if info.default_factory is not None:
                fields.append((name, tp, msgspec.field(default_factory=info.default_factory)))
            elif info.default is not PydanticUndefined:
                default = info.default
                if isinstance(default, (list, dict, set)):
                    fields.append((name, tp, msgspec.field(default_factory=lambda d=default: copy.deepcopy(d))))
                else:
                    fields.append((name, tp, default))
            else:
                fields.append((name, tp))
        struct = msgspec.defstruct(f"{model.__name__}Mirror", fields, bases=(_Part,), kw_only=True,
                                   forbid_unknown_fields=config.get("extra") == "forbid")
        return struct, tuple(datetimes), tuple(after)


def fast_validator(model: type[BaseModel]) -> Callable[[bytes], Any] | None:
    """``check(raw) -> event or None`` for ``model``: the event (a msgspec Struct whose
    datetime fields are ``datetime``s, with the model's field names) when the record is
    surely valid; None when pydantic must decide. None instead of a function when msgspec
    is not installed or the model uses something the mirror cannot reproduce."""
    if msgspec is None:
        return None
    try:
        struct, datetimes, after = _Builder().struct_of(model)
        decode = msgspec.json.Decoder(struct).decode
    except (Unsupported, TypeError, ValueError) as e:
        log.info("no fast validation for %s (%s): pydantic validates every record", model.__name__, e)
        return None
    fromiso = datetime.fromisoformat

    def check(raw: bytes):
        try:
            event = decode(raw)
            for name in datetimes:
                setattr(event, name, fromiso(getattr(event, name)))
            for validator in after:
                validator(event)
        except Exception:  # noqa: BLE001 - anything the mirror cannot vouch for: pydantic decides
            return None
        return event

    return check

