"""Azure OpenAI: the OpenAI wire format on per-deployment URLs with an ``api-key`` header.

``{base}/openai/deployments/{model}/chat/completions?api-version={api_version}`` (and
``/completions``, ``/embeddings``); the request's ``model`` is the deployment name. The
base is the resource endpoint (``https://NAME.openai.azure.com``; a trailing ``/openai`` is
tolerated). Azure's stream starts with a ``prompt_filter_results`` chunk without choices;
the OpenAI adapter's normalization drops it.
"""

from __future__ import annotations

from urllib.parse import quote

from .base import Json, Upstream
from .openai import Endpoint, OpenAIAdapter

DEFAULT_API_VERSION = "2024-10-21"
"""GA version with ``stream_options.include_usage``."""


class AzureOpenAIAdapter(OpenAIAdapter):
    provider = "azure-openai"

    def _prepare(self, up: Upstream) -> Endpoint:
        headers = {"Content-Type": "application/json"}
        if up.api_key:
            headers["api-key"] = up.api_key
        base = up.base_url.rstrip("/")
        base = base.removesuffix("/openai")
        version = quote(up.api_version or DEFAULT_API_VERSION, safe="")
        return Endpoint(base + "/openai/deployments/", headers, "?api-version=" + version)

    def _url(self, ep: Endpoint, path: str, body: Json) -> str:
        return ep.base + quote(str(body.get("model", "")), safe="") + path + ep.suffix
