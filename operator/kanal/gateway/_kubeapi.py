"""How the gateway talks to the Kubernetes API (TokenReview, the persisted snapshot):
TLS trust and credentials from GatewaySettings, without the Kubernetes client library."""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from pathlib import Path

from kanal.gateway.settings import GatewaySettings


def ssl_context(settings: GatewaySettings) -> ssl.SSLContext:
    """Trust the cluster CA; present a client certificate when one is configured."""
    context = ssl.create_default_context(cafile=settings.kube_ca_file)
    if settings.kube_client_cert_file:
        context.load_cert_chain(settings.kube_client_cert_file, settings.kube_client_key_file)
    return context


def auth_headers(settings: GatewaySettings, base: Mapping[str, str]) -> dict[str, str]:
    """``base`` plus the bearer token, re-read on every call: projected tokens rotate."""
    headers = dict(base)
    if settings.kube_token_file:
        token = Path(settings.kube_token_file).read_text().strip()
        headers["Authorization"] = f"Bearer {token}"
    return headers
