"""The few core Kubernetes kinds kanal reads from manifest files besides its own."""

from __future__ import annotations

import base64
import binascii
from typing import Literal

from pydantic import ConfigDict, Field, field_validator

from kanal.api._base import KanalModel
from kanal.api.common import ObjectMeta

API_KEY_LABEL = "kanal.dev/api-key"
"""Label marking a Secret whose data.key is a caller API key."""


class Secret(KanalModel):
    """A core/v1 Secret: upstream credentials, or a caller API key."""

    model_config = ConfigDict(extra="allow")

    api_version: Literal["v1"] = Field(alias="apiVersion")
    kind: Literal["Secret"]
    metadata: ObjectMeta
    type: str | None = None
    data: dict[str, str] | None = None
    string_data: dict[str, str] | None = None

    @field_validator("data")
    @classmethod
    def _data_is_base64(cls, data: dict[str, str] | None) -> dict[str, str] | None:
        for key, value in (data or {}).items():
            try:
                base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError) as err:
                raise ValueError(
                    f"data.{key} is not base64 (use stringData for plain text)"
                ) from err
        return data

    def values(self) -> dict[str, str]:
        """Decoded data, with stringData winning as the API server merges it."""
        decoded = {k: base64.b64decode(v).decode() for k, v in (self.data or {}).items()}
        return {**decoded, **(self.string_data or {})}


class Namespace(KanalModel):
    """A core/v1 Namespace; accepted in manifest folders and otherwise ignored."""

    model_config = ConfigDict(extra="allow")

    api_version: Literal["v1"] = Field(alias="apiVersion")
    kind: Literal["Namespace"]
    metadata: ObjectMeta
