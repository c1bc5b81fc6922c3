"""Base model and the cross-field rule mechanism shared by every API type.

A cross-field rule is declared once, as a :class:`Rule`, and enforced twice from that one
declaration: the API server evaluates its CEL expression (it is emitted into the CRD as
``x-kubernetes-validations``) and pydantic evaluates its Python ``check`` (offline
``kanal validate`` and ``kanal up``). Tests run the same bad objects through both.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, GetJsonSchemaHandler, model_validator
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue, WithJsonSchema
from pydantic_core import PydanticCustomError, core_schema


@dataclass(frozen=True)
class Rule:
    """One cross-field rule: a CEL expression for the API server and its Python twin."""

    cel: str
    message: str
    check: Callable[[Any], bool]
    field_path: str | None = None
    """Where the API server reports the error, relative to the object holding the rule
    (for example ``.traffic``); ``None`` reports it on the object itself."""
    reason: str = "FieldValueInvalid"


class KanalModel(BaseModel):
    """Base of every kanal API type: camelCase on the wire, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
        frozen=True,
    )

    rules: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self) -> KanalModel:
        for rule in type(self).rules:
            if not rule.check(self):
                raise PydanticCustomError(
                    "kanal_rule",
                    "{message}",
                    {"message": rule.message, "field_path": rule.field_path or ""},
                )
        return self

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(schema)
        if cls.rules:
            target = handler.resolve_ref_schema(json_schema)
            validations = []
            for rule in cls.rules:
                entry: dict[str, str] = {"rule": rule.cel, "message": rule.message}
                if rule.field_path:
                    entry["fieldPath"] = rule.field_path
                entry["reason"] = rule.reason
                validations.append(entry)
            target["x-kubernetes-validations"] = validations
        return json_schema


_DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

Duration = Annotated[
    str,
    Field(
        pattern=_DURATION_PATTERN,
        max_length=32,
        json_schema_extra={"example": "30s"},
    ),
]
"""A duration as Kubernetes and Go spell it: ``200ms``, ``30s``, ``5m``, ``24h``, ``1h30m``."""


def parse_duration(text: str) -> float:
    """Seconds in a :data:`Duration` string; raises ``ValueError`` on a malformed one."""
    if not re.fullmatch(_DURATION_PATTERN, text):
        raise ValueError(f"not a duration: {text!r} (use forms like 200ms, 30s, 5m, 24h)")
    return sum(float(amount) * _UNIT_SECONDS[unit] for amount, unit in _DURATION_PART.findall(text))


_QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)

Quantity = Annotated[
    int | Annotated[str, Field(pattern=_QUANTITY_PATTERN)],
    WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": _QUANTITY_PATTERN,
        }
    ),
]
"""A Kubernetes resource quantity such as ``500m``, ``2Gi`` or ``1``."""

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
