"""The persisted snapshot: one GET of the operator's Secret through the Kubernetes REST API.

The gateway needs exactly ``get`` on ``secrets/kanal-snapshot`` in the operator's
namespace for this (a Role with ``resourceNames``), and reuses the credentials it has for
TokenReview: a ServiceAccount token (re-read on every call: projected tokens rotate) or a
client certificate. No Kubernetes client library: this is one HTTPS request.

``data["snapshot.json"]`` is base64 of ``to_bytes(snapshot)``, or of those bytes gzipped
(a Secret holds at most 1 MiB: about 1,100 routes uncompressed, far more compressed).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import ssl
from urllib.parse import quote

import aiohttp
import orjson

from kanal.gateway._kubeapi import auth_headers, ssl_context
from kanal.gateway._subscriber_codec import MAX_SNAPSHOT_BYTES, inflate
from kanal.gateway.settings import GatewaySettings
from kanal.snapshot import SNAPSHOT_KEY, SNAPSHOT_SECRET, VERSION_ANNOTATION, Snapshot, from_bytes

log = logging.getLogger("kanal.gateway.subscriber")


class SnapshotUnavailable(Exception):
    """The persisted snapshot could not be read; the message says why, for people."""


class PersistedSnapshot:
    """Reads the last good snapshot the operator persisted in a Secret."""

    def __init__(
        self,
        settings: GatewaySettings,
        namespace: str,
        name: str = SNAPSHOT_SECRET,
        *,
        timeout: float = 10.0,
    ) -> None:
        if not settings.kube_api_url:
            raise ValueError("reading the persisted snapshot needs kube_api_url")
        self.settings = settings
        self.namespace = namespace
        self.name = name
        self.timeout = timeout
        self.url = (
            f"{settings.kube_api_url.rstrip('/')}/api/v1/namespaces/"
            f"{quote(namespace, safe='')}/secrets/{quote(name, safe='')}"
        )
        self._session: aiohttp.ClientSession | None = None

    @property
    def where(self) -> str:
        return f"Secret {self.namespace}/{self.name}"

    def _ssl(self) -> ssl.SSLContext:
        return ssl_context(self.settings)

    def _headers(self) -> dict[str, str]:
        return auth_headers(self.settings, {"Accept": "application/json"})

    async def load(self) -> Snapshot:
        """The persisted snapshot, parsed and validated; SnapshotUnavailable otherwise."""
        try:
            if self._session is None:
                self._session = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(ssl=self._ssl())
                )
            async with self._session.get(
                self.url,
                headers=self._headers(),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as response:
                body = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError, ssl.SSLError) as err:
            raise SnapshotUnavailable(
                f"cannot reach the Kubernetes API at {self.settings.kube_api_url} "
                f"to read {self.where}: {type(err).__name__}: {err}"
            ) from None
        if status == 404:
            raise SnapshotUnavailable(
                f"{self.where} does not exist (yet): the operator has not persisted a snapshot"
            )
        if status in (401, 403):
            raise SnapshotUnavailable(
                f"the Kubernetes API refused to read {self.where} (HTTP {status}): the "
                f"gateway's identity needs `get` on secrets/{self.name} in {self.namespace}"
            )
        if status >= 300:
            raise SnapshotUnavailable(f"reading {self.where}: HTTP {status}")
        return await asyncio.to_thread(self._parse, body)

    def _parse(self, body: bytes) -> Snapshot:
        try:
            secret = orjson.loads(body)
            encoded = (secret.get("data") or {}).get(SNAPSHOT_KEY)
            annotations = (secret.get("metadata") or {}).get("annotations") or {}
        except (orjson.JSONDecodeError, AttributeError):
            raise SnapshotUnavailable(f"{self.where}: the API answered with no Secret") from None
        if not encoded:
            raise SnapshotUnavailable(f"{self.where} has no data key {SNAPSHOT_KEY}")
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise SnapshotUnavailable(f"{self.where}: {SNAPSHOT_KEY} is not base64") from None
        try:
            snapshot = from_bytes(inflate(raw, MAX_SNAPSHOT_BYTES))
        except ValueError as err:
            raise SnapshotUnavailable(f"{self.where} holds an invalid snapshot: {err}") from None
        claimed = annotations.get(VERSION_ANNOTATION)
        if claimed and claimed != snapshot.version:
            log.warning(
                "%s is annotated %s=%s but holds snapshot %s; using what it holds",
                self.where,
                VERSION_ANNOTATION,
                claimed,
                snapshot.version,
            )
        return snapshot

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
