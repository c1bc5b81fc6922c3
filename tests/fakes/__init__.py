"""Fake upstream servers for tests: real aiohttp servers on 127.0.0.1 that speak each
provider's wire format, with scriptable faults and a record of every request.

    async with FakeOpenAI(api_key="sk-test") as fake:
        fake.script(Fault.status(500), Fault.rate_limited(2), Fault.ok("hi there"))
        ...  # point a backend at fake.url (Azure: fake.azure_url)
        assert fake.last.header("authorization") == "Bearer sk-test"

Sync clients: ``with FakeOpenAI().serve_in_thread() as fake: ...``.
"""

from ._base import (
    DEFAULT_DIMENSIONS,
    DEFAULT_PROMPT_TOKENS,
    DEFAULT_TEXT,
    FakeUpstream,
    Fault,
    Operation,
    RecordedRequest,
    ToolCall,
    fake_embedding,
)
from .anthropic import FakeAnthropic
from .gemini import FakeGemini
from .helpers import kanal_upstream, refused_url, run, unused_port
from .openai import FakeOpenAI

__all__ = [
    "DEFAULT_DIMENSIONS",
    "DEFAULT_PROMPT_TOKENS",
    "DEFAULT_TEXT",
    "FakeAnthropic",
    "FakeGemini",
    "FakeOpenAI",
    "FakeUpstream",
    "Fault",
    "Operation",
    "RecordedRequest",
    "ToolCall",
    "fake_embedding",
    "kanal_upstream",
    "refused_url",
    "run",
    "unused_port",
]
