"""Usage events end to end: a mix of non-streaming, streaming, cached, failed and
disconnected requests against a fake OpenAI upstream; the usage totals equal the sum of
what the upstream reported (plus the gateway's estimate for the stream the caller cut),
in memory and in Redis; GET /v1/usage groups and isolates tenants; `kanal usage` as a
real process against `kanal up`."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis as redis_client

from fakes import FakeOpenAI, Fault
from gwkit import TEST_SETTINGS, gateway_with, snapshot_from_yaml
from harness.procs import Proc, free_ports, wait_until
from kanal.gateway.service import Gateway
from kanal.gateway.telemetry._usage import UsageEvent, UsageSink
from kanal.gateway.tokens import estimate_prompt, estimate_text
from kanal.gateway.usage_api import usage_sink

PROVIDER_KEY = "sk-upstream-usage-test-0123456789"
PRICE_IN, PRICE_OUT = 2.0, 8.0  # USD per million tokens


def objects(upstream: str) -> str:
    return f"""
apiVersion: v1
kind: Secret
metadata: {{name: openai-key, namespace: team-a}}
stringData: {{apiKey: {PROVIDER_KEY}}}
---
apiVersion: kanal.dev/v1alpha1
kind: ModelBackend
metadata: {{name: openai, namespace: team-a}}
spec:
  provider: openai
  endpoint: {upstream}
  credentials: {{secretRef: {{name: openai-key, key: apiKey}}}}
  models:
  - {{name: gpt-4o-mini, contextWindow: 128000,
     pricing: {{inputPerMTok: {PRICE_IN}, outputPerMTok: {PRICE_OUT}}}}}
---
apiVersion: kanal.dev/v1alpha1
kind: LlmRoute
metadata: {{name: chat, namespace: team-a}}
spec:
  backends: [{{backendRef: {{name: openai}}, model: gpt-4o-mini}}]
  retry: {{attempts: 0}}
  cache: {{ttl: 10m}}
  access: {{namespaces: [team-b]}}
---
apiVersion: kanal.dev/v1alpha1
kind: LlmRoute
metadata: {{name: code, namespace: team-a}}
spec:
  backends: [{{backendRef: {{name: openai}}, model: gpt-4o-mini}}]
  retry: {{attempts: 0}}
---
apiVersion: v1
kind: Secret
metadata: {{name: alice, namespace: team-a, labels: {{kanal.dev/api-key: "true"}}}}
stringData: {{key: sk-alice}}
---
apiVersion: v1
kind: Secret
metadata: {{name: bob, namespace: team-a, labels: {{kanal.dev/api-key: "true"}}}}
stringData: {{key: sk-bob}}
---
apiVersion: v1
kind: Secret
metadata: {{name: carol, namespace: team-b, labels: {{kanal.dev/api-key: "true"}}}}
stringData: {{key: sk-carol}}
"""


def cost(prompt: int, completion: int) -> float:
    return (prompt * PRICE_IN + completion * PRICE_OUT) / 1e6


@dataclass
class Client:
    session: aiohttp.ClientSession
    base: str
    gateway: Gateway

    async def chat(self, key: str, model: str, text: str, **fields: Any) -> tuple[int, Any]:
        body = {"model": model, "messages": [{"role": "user", "content": text}], **fields}
        async with self.session.post(
            f"{self.base}/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {key}"},
        ) as r:
            if fields.get("stream"):
                return r.status, await r.text()
            return r.status, await r.json()

    async def usage(self, key: str, **params: str) -> tuple[int, Any]:
        async with self.session.get(
            f"{self.base}/v1/usage", params=params, headers={"Authorization": f"Bearer {key}"}
        ) as r:
            return r.status, await r.json()

    @property
    def sink(self) -> UsageSink:
        sink = usage_sink(self.gateway)
        assert sink is not None
        return sink

    async def event(self, request_id: str, timeout: float = 5.0) -> UsageEvent:
        """The usage event of ``request_id``, once written."""
        deadline = time.monotonic() + timeout
        while True:
            await self.sink.flush()
            for found in await self.sink.store.recent(1000):
                if found.request_id == request_id:
                    return found
            if time.monotonic() > deadline:
                raise AssertionError(f"no usage event for {request_id}")
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def started(redis_url: str | None) -> AsyncIterator[tuple[Client, FakeOpenAI]]:
    async with FakeOpenAI(api_key=PROVIDER_KEY) as fake:
        settings = replace(TEST_SETTINGS, redis_url=redis_url, anonymous_tenant=None)
        snapshot = snapshot_from_yaml(objects(fake.url))
        async with gateway_with(snapshot, settings) as running, aiohttp.ClientSession() as s:
            yield Client(s, f"http://127.0.0.1:{running.http_port}", running.gateway), fake


def run(check: Callable[[Client, FakeOpenAI], Awaitable[None]], redis_url: str | None) -> None:
    async def main() -> None:
        async with started(redis_url) as (client, fake):
            await check(client, fake)

    asyncio.run(asyncio.wait_for(main(), 60))


@pytest.fixture(params=["memory", "redis"])
def store_url(request: pytest.FixtureRequest) -> str | None:
    if request.param == "memory":
        return None
    url: str = request.getfixturevalue("redis_url")
    return url


async def cut_stream(client: Client, key: str, request_id: str, wait_for: str) -> None:
    """A streaming request whose caller goes away once ``wait_for`` has arrived."""
    body = {
        "model": "code",
        "stream": True,
        "messages": [{"role": "user", "content": "count slowly please"}],
    }
    headers = {"Authorization": f"Bearer {key}", "x-request-id": request_id}
    seen = ""
    async with client.session.post(
        f"{client.base}/v1/chat/completions", json=body, headers=headers
    ) as r:
        assert r.status == 200
        async for line in r.content:
            seen += line.decode()
            if wait_for in seen:
                break
        assert r.connection is not None
        r.connection.transport.abort()  # type: ignore[union-attr]


def test_totals_equal_what_the_upstream_reported(store_url: str | None) -> None:
    async def check(c: Client, fake: FakeOpenAI) -> None:
        fake.script(
            Fault.ok("one two three", prompt_tokens=31, completion_tokens=17),  # alice, chat
            Fault.ok("four five", prompt_tokens=23, completion_tokens=5),  # bob, code
            Fault.ok("six seven eight nine", prompt_tokens=40, completion_tokens=11),  # stream
            Fault.status(500, "boom"),  # error: no usage
            Fault.ok("alpha beta gamma delta epsilon", pause_after=3),  # cut by the caller
        )
        status, first = await c.chat("sk-alice", "chat", "what is up")
        assert status == 200, first
        status, cached = await c.chat("sk-alice", "chat", "what is up")  # cache hit
        assert status == 200 and cached["choices"] == first["choices"]
        status, _ = await c.chat("sk-bob", "code", "hello there")
        assert status == 200
        status, text = await c.chat("sk-alice", "code", "stream it", stream=True)
        assert status == 200 and "[DONE]" in text and '"usage"' not in text  # caller did not ask
        status, failed = await c.chat("sk-bob", "code", "fail please")
        assert status == 502, failed
        await cut_stream(c, "sk-alice", "req_cut_1", wait_for=" beta")
        cut = await c.event("req_cut_1")
        fake.resume()

        # the cut stream: billed for what was produced, estimated (no usage report came)
        prompt = estimate_prompt(
            "chat", {"messages": [{"role": "user", "content": "count slowly please"}]}
        )
        assert (cut.outcome, cut.usage_source) == ("client_disconnected", "estimated")
        assert (cut.input_tokens, cut.output_tokens) == (prompt, estimate_text("alpha beta"))
        assert cut.cost_usd == pytest.approx(cost(prompt, estimate_text("alpha beta")))
        assert cut.stream and cut.status == 200

        events = [e for e in await c.sink.store.recent(100)]
        assert len(events) == 6
        stream = next(e for e in events if e.stream and e.outcome == "ok")
        assert (stream.usage_source, stream.input_tokens, stream.output_tokens) == (
            "provider",
            40,
            11,
        )
        assert fake.requests[2].body["stream_options"] == {"include_usage": True}
        hit = next(e for e in events if e.cached)
        assert hit.cost_nano == 0 and hit.input_tokens == 31 and hit.backend is None

        status, summary = await c.usage("sk-alice", group_by="")
        assert status == 200, summary
        totals = summary["totals"]
        upstream_in = 31 + 23 + 40 + prompt
        upstream_out = 17 + 5 + 11 + estimate_text("alpha beta")
        assert totals["requests"] == 6
        assert totals["input_tokens"] == upstream_in
        assert totals["output_tokens"] == upstream_out
        assert totals["cost_usd"] == pytest.approx(
            cost(31, 17) + cost(23, 5) + cost(40, 11) + cost(prompt, estimate_text("alpha beta")),
            abs=1e-9,
        )
        assert (
            totals["cache_hits"],
            totals["cached_input_tokens"],
            totals["cached_output_tokens"],
        ) == (1, 31, 17)
        assert totals["errors"] == 1 and totals["disconnects"] == 1

    run(check, store_url)


def test_grouping_and_tenant_isolation(store_url: str | None) -> None:
    async def check(c: Client, fake: FakeOpenAI) -> None:
        fake.script(
            Fault.ok(prompt_tokens=10, completion_tokens=1),
            Fault.ok(prompt_tokens=20, completion_tokens=2),
            Fault.ok(prompt_tokens=30, completion_tokens=3),
        )
        assert (await c.chat("sk-alice", "chat", "a"))[0] == 200
        assert (await c.chat("sk-alice", "code", "b"))[0] == 200
        assert (await c.chat("sk-bob", "code", "c"))[0] == 200

        status, by_key = await c.usage("sk-bob", group_by="key")  # any key of the tenant
        assert status == 200
        assert [(r["key"], r["requests"], r["input_tokens"]) for r in by_key["data"]] == [
            ("key:team-a/alice", 2, 30),
            ("key:team-a/bob", 1, 30),
        ]
        _, by_route = await c.usage("sk-alice", group_by="route,key")
        assert [(r["route"], r["key"], r["output_tokens"]) for r in by_route["data"]] == [
            ("team-a/chat", "key:team-a/alice", 1),
            ("team-a/code", "key:team-a/alice", 2),
            ("team-a/code", "key:team-a/bob", 3),
        ]
        today = dt.datetime.now(dt.UTC).date().isoformat()
        _, by_day = await c.usage("sk-alice", group_by="day,model,backend,namespace")
        assert [
            (r["day"], r["model"], r["backend"], r["namespace"], r["requests"])
            for r in by_day["data"]
        ] == [(today, "gpt-4o-mini", "team-a/openai", "team-a", 3)]
        _, one_route = await c.usage("sk-alice", route="team-a/code")
        assert one_route["totals"]["requests"] == 2 and one_route["route"] == "team-a/code"
        _, yesterday = await c.usage("sk-alice", start="2020-01-01", end="2020-01-31")
        assert yesterday["data"] == [] and yesterday["totals"]["requests"] == 0

        # team-b sees none of team-a's usage, even on team-a's route shared with it
        status, other = await c.usage("sk-carol", group_by="key,route")
        assert status == 200
        assert other["namespace"] == "team-b"
        assert other["data"] == [] and other["totals"]["requests"] == 0
        fake.script(Fault.ok(prompt_tokens=7, completion_tokens=7))
        assert (await c.chat("sk-carol", "chat", "shared"))[0] == 200
        _, other = await c.usage("sk-carol", group_by="key,route")
        assert [(r["key"], r["route"], r["input_tokens"]) for r in other["data"]] == [
            ("key:team-b/carol", "team-a/chat", 7)
        ]
        _, mine = await c.usage("sk-alice", group_by="")
        assert mine["totals"]["requests"] == 3  # carol's call is team-b's, not team-a's

        # bad parameters and callers
        status, bad = await c.usage("sk-alice", group_by="user")
        assert status == 400 and bad["error"]["param"] == "group_by"
        status, bad = await c.usage("sk-alice", start="yesterday")
        assert status == 400 and bad["error"]["param"] == "start"
        status, bad = await c.usage("sk-nobody")
        assert status == 401, bad

    run(check, store_url)


def test_redis_holds_the_stream_and_expiring_day_hashes(redis_url: str) -> None:
    async def check(c: Client, fake: FakeOpenAI) -> None:
        for i in range(3):
            assert (await c.chat("sk-alice", "code", f"n{i}"))[0] == 200
        await c.sink.flush()

    run(check, redis_url)
    conn = redis_client.Redis.from_url(redis_url, decode_responses=True)
    try:
        entries = conn.xrange("kanal:{usage}")
        assert len(entries) == 3
        fields = entries[0][1]
        assert fields["key"] == "key:team-a/alice" and fields["route"] == "team-a/code"
        assert fields["usage_source"] == "provider" and fields["outcome"] == "ok"
        assert "sk-alice" not in json.dumps(entries)
        day = dt.datetime.now(dt.UTC).date().isoformat()
        name = f"kanal:{{usage}}:day:{day}:team-a"
        assert 0 < conn.ttl(name) <= 400 * 86400
        assert conn.hlen(name) >= 4  # requests, input, output, cost of one combination
    finally:
        conn.close()


def test_redis_down_drops_events_but_never_fails_requests() -> None:
    from harness.procs import free_ports as ports

    (closed,) = ports(1)

    async def check(c: Client, fake: FakeOpenAI) -> None:
        status, body = await c.chat("sk-alice", "code", "still served")
        assert status == 200, body
        with contextlib.suppress(TimeoutError):
            await c.sink.flush(timeout=5)
        assert c.sink.dropped == 1 and c.sink.written == 0
        status, body = await c.usage("sk-alice")
        assert status == 503 and body["error"]["code"] == "usage_unavailable"

    settings_url = f"redis://127.0.0.1:{closed}/0"

    async def main() -> None:
        async with FakeOpenAI(api_key=PROVIDER_KEY) as fake:
            settings = replace(
                TEST_SETTINGS, redis_url=settings_url, anonymous_tenant=None, redis_fail_open=True
            )
            snapshot = snapshot_from_yaml(objects(fake.url))
            async with gateway_with(snapshot, settings) as running, aiohttp.ClientSession() as s:
                base = f"http://127.0.0.1:{running.http_port}"
                await check(Client(s, base, running.gateway), fake)

    asyncio.run(asyncio.wait_for(main(), 60))


# -- kanal usage, a real process against kanal up -------------------------------------------

MOCK = """
apiVersion: kanal.dev/v1alpha1
kind: ModelBackend
metadata: {name: mock}
spec:
  provider: mock
  models: [{name: mock-small, contextWindow: 8192, pricing: {inputPerMTok: 1, outputPerMTok: 2}}]
---
apiVersion: kanal.dev/v1alpha1
kind: LlmRoute
metadata: {name: chat}
spec:
  backends: [{backendRef: {name: mock}, model: mock-small}]
---
apiVersion: kanal.dev/v1alpha1
kind: LlmRoute
metadata: {name: code}
spec:
  backends: [{backendRef: {name: mock}, model: mock-small}]
---
apiVersion: v1
kind: Secret
metadata: {name: ops, labels: {kanal.dev/api-key: "true"}}
stringData: {key: sk-ops-usage-cli}
"""


@pytest.fixture(scope="module")
def kanal_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    folder = tmp_path_factory.mktemp("manifests")
    (folder / "objects.yaml").write_text(MOCK)
    log = tmp_path_factory.mktemp("logs") / "up.log"
    port, grpc_port = free_ports(2)
    argv = [sys.executable, "-m", "kanal", "up", "-f", str(folder), "--port", str(port)]
    proc = Proc("kanal up", [*argv, "--grpc-port", str(grpc_port)], log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: urllib.request.urlopen(url + "/readyz", timeout=1).status == 200,
            proc,
            "ready",
            30,
        )
        yield url, log
    finally:
        proc.stop()


def _post(url: str, model: str, key: str) -> dict[str, Any]:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "a b c d"}]})
    request = urllib.request.Request(
        url + "/v1/chat/completions",
        data=body.encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as r:
        answer: dict[str, Any] = json.load(r)
        return answer


def _kanal_usage(
    url: str, *args: str, key: str | None = "sk-ops-usage-cli"
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "KANAL_API_KEY"}
    if key is not None:
        env["MY_KANAL_KEY"] = key
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "kanal",
            "usage",
            "--url",
            url,
            "--api-key-env",
            "MY_KANAL_KEY",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )


def test_kanal_usage_prints_the_table_and_json(kanal_up: tuple[str, Path]) -> None:
    url, _ = kanal_up
    answers = [_post(url, "chat", "sk-ops-usage-cli") for _ in range(2)]
    answers.append(_post(url, "code", "sk-ops-usage-cli"))
    prompt = sum(a["usage"]["prompt_tokens"] for a in answers)
    completion = sum(a["usage"]["completion_tokens"] for a in answers)

    done = _kanal_usage(url, "--by", "key,route", "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["group_by"] == ["key", "route"]
    assert [(r["route"], r["requests"]) for r in summary["data"]] == [
        ("default/chat", 2),
        ("default/code", 1),
    ]
    assert summary["totals"]["input_tokens"] == prompt
    assert summary["totals"]["output_tokens"] == completion

    today = dt.datetime.now(dt.UTC).date().isoformat()
    done = _kanal_usage(url, "--by", "key,route", "--since", today, "--until", today)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"usage of namespace default from {today} to {today} (UTC)"
    assert lines[1].split()[:3] == ["KEY", "ROUTE", "REQUESTS"]
    assert lines[2].split()[:3] == ["key:default/ops", "default/chat", "2"]
    assert lines[3].split()[:3] == ["key:default/ops", "default/code", "1"]
    total = lines[4].split()
    assert total[:4] == ["TOTAL", "3", str(prompt), str(completion)]
    assert float(total[4]) == pytest.approx(summary["totals"]["cost_usd"], abs=1e-6)


def test_kanal_usage_reports_errors(kanal_up: tuple[str, Path]) -> None:
    url, _ = kanal_up
    done = _kanal_usage(url, "--by", "user")
    assert done.returncode == 1
    assert "400" in done.stderr and "param group_by" in done.stderr
    done = _kanal_usage(url, key="sk-wrong")
    assert done.returncode == 1 and "401" in done.stderr
    assert "sk-wrong" not in done.stderr
