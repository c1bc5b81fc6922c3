"""Errors as callers see them: OpenAI's error JSON with the right HTTP status."""

from __future__ import annotations

from typing import Any

import orjson

from kanal.gateway.providers.base import FailureKind, UpstreamError

_TYPE_FOR_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


class GatewayError(Exception):
    """A request that ends in an error response; the message is shown to the caller."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        retry_after: float | None = None,
        error_type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.retry_after = retry_after
        self.error_type = error_type or _TYPE_FOR_STATUS.get(
            status, "api_error" if status >= 500 else "invalid_request_error"
        )

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }

    def json_bytes(self) -> bytes:
        return orjson.dumps(self.body())

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, round(self.retry_after)))}


def bad_request(message: str, param: str | None = None) -> GatewayError:
    return GatewayError(400, message, param=param, code="invalid_value" if param else None)


def from_upstream(err: UpstreamError, *, model: str) -> GatewayError:
    """What the caller sees when the last upstream attempt failed."""
    match err.kind:
        case FailureKind.CLIENT:
            status = err.status if err.status in (400, 404, 413, 422) else 400
            return GatewayError(status, err.message, code="upstream_rejected_request")
        case FailureKind.RATE_LIMITED:
            return GatewayError(
                429,
                f"upstream rate limit for model {model}: {err.message}",
                code="upstream_rate_limited",
                retry_after=err.retry_after if err.retry_after is not None else 1.0,
            )
        case FailureKind.TIMEOUT:
            return GatewayError(
                504, f"upstream timed out for model {model}: {err.message}", code="upstream_timeout"
            )
        case FailureKind.CONNECT:
            return GatewayError(
                503,
                f"no upstream reachable for model {model}: {err.message}",
                code="upstream_unavailable",
            )
        case FailureKind.AUTH:
            return GatewayError(
                502,
                f"the upstream refused the backend's credentials for model {model}; "
                "check the ModelBackend's Secret",
                code="upstream_auth_failed",
            )
        case _:
            return GatewayError(
                502, f"upstream failed for model {model}: {err.message}", code="upstream_error"
            )
