"""Who is calling: API keys (kept as hashes) and Kubernetes ServiceAccount tokens.

A ServiceAccount token is checked with a TokenReview against the Kubernetes API, and the
verdict is reused for a short while per token hash, so a pod calling in a loop costs one
review per interval, not one per request.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import ssl
import time

import aiohttp
import orjson

from kanal.gateway._kubeapi import auth_headers, ssl_context
from kanal.gateway.errors import GatewayError
from kanal.gateway.policy.base import Caller
from kanal.gateway.settings import GatewaySettings
from kanal.snapshot import ApiKey, Snapshot

log = logging.getLogger("kanal.gateway.auth")
_SA_PREFIX = "system:serviceaccount:"


def _looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2 and token.startswith("eyJ")


def _review_unavailable() -> GatewayError:
    return GatewayError(
        503, "cannot verify ServiceAccount tokens right now", code="token_review_unavailable"
    )


class TokenReviewer:
    """Asks the Kubernetes API who a bearer token belongs to."""

    def __init__(self, settings: GatewaySettings) -> None:
        assert settings.kube_api_url
        self.url = settings.kube_api_url.rstrip("/") + "/apis/authentication.k8s.io/v1/tokenreviews"
        self.settings = settings
        self._verdicts: dict[str, tuple[float, Caller | None]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._lock = asyncio.Lock()

    def _ssl(self) -> ssl.SSLContext:
        return ssl_context(self.settings)

    def _headers(self) -> dict[str, str]:
        return auth_headers(self.settings, {"Content-Type": "application/json"})

    async def review(self, token: str) -> Caller | None:
        digest = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        cached = self._verdicts.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        caller = await self._ask(token)
        if len(self._verdicts) > 10_000:  # bounded: forget everything rather than grow
            self._verdicts.clear()
        self._verdicts[digest] = (now + self.settings.token_review_cache_seconds, caller)
        return caller

    async def _ask(self, token: str) -> Caller | None:
        if self._session is None:
            async with self._lock:
                if self._session is None:
                    connector = aiohttp.TCPConnector(ssl=self._ssl())
                    self._session = aiohttp.ClientSession(connector=connector)
        review = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token},
        }
        try:
            async with self._session.post(
                self.url,
                data=orjson.dumps(review),
                headers=self._headers(),
                timeout=aiohttp.ClientTimeout(total=5),
            ) as response:
                body = await response.read()
                http_status = response.status
        except (aiohttp.ClientError, TimeoutError) as err:
            log.error("TokenReview failed: %s", type(err).__name__)
            raise _review_unavailable() from None
        if http_status >= 300:
            log.error("TokenReview refused: HTTP %d", http_status)
            raise _review_unavailable()
        status = orjson.loads(body).get("status") or {}
        username = (status.get("user") or {}).get("username", "")
        if not status.get("authenticated") or not username.startswith(_SA_PREFIX):
            return None
        namespace, _, name = username[len(_SA_PREFIX) :].partition(":")
        return Caller(tenant=namespace, service_account=f"{namespace}/{name}")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class Authenticator:
    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.reviewer = TokenReviewer(settings) if settings.kube_api_url else None
        self._keys: dict[str, ApiKey] = {}
        self._keys_of: Snapshot | None = None

    async def authenticate(self, snapshot: Snapshot, authorization: str | None) -> Caller:
        """``Authorization: Bearer <API key or ServiceAccount token>`` -> Caller, or 401."""
        if self._keys_of is not snapshot:
            self._keys = {k.sha256: k for k in snapshot.api_keys}
            self._keys_of = snapshot
        token = None
        if authorization:
            scheme, _, value = authorization.partition(" ")
            token = value.strip() if scheme.lower() == "bearer" else None
        if token:
            digest = hashlib.sha256(token.encode()).hexdigest()
            found = self._keys.get(digest)
            # the dict lookup compares digests; compare once more in constant time
            if found is not None and hmac.compare_digest(found.sha256, digest):
                return Caller(found.namespace, found.secret, tuple(sorted(found.labels.items())))
            if self.reviewer is not None and _looks_like_jwt(token):
                caller = await self.reviewer.review(token)
                if caller is not None:
                    return caller
        anonymous = self.settings.anonymous_tenant
        if anonymous is not None and not snapshot.api_keys:
            return Caller(anonymous)  # e.g. kanal up with no key Secrets: it said so at start
        if not token:
            raise GatewayError(
                401, "missing API key: send Authorization: Bearer <key>", code="missing_api_key"
            )
        raise GatewayError(401, "incorrect API key provided", code="invalid_api_key")

    async def close(self) -> None:
        if self.reviewer is not None:
            await self.reviewer.close()
