"""The sync loop against an in-memory API: compile, publish, persist, status, debounce."""

from __future__ import annotations

import asyncio
import base64
import copy
from collections.abc import Mapping
from typing import Any

from ctlkit import NS, example, mock_backend, route_body

from kanal.controller.index import View, latest, parse_backend, parse_route, parse_secret
from kanal.controller.publisher import InMemoryPublisher, SnapshotPublisher
from kanal.controller.status import ReconcileResult
from kanal.controller.sync import ACKS_ANNOTATION, Sync
from kanal.snapshot import SNAPSHOT_KEY, SNAPSHOT_SECRET, VERSION_ANNOTATION, from_bytes

OPERATOR_NS = "kanal"


class FakeApi:
    """Secrets and status writes in memory, counting calls."""

    def __init__(self) -> None:
        self.secrets: dict[tuple[str, str], dict[str, Any]] = {}
        self.statuses: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.calls: list[str] = []
        self._rv = 100

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def put_secret(
        self, namespace: str, name: str, data: dict[str, str], **meta: Any
    ) -> dict[str, Any]:
        body = {
            "metadata": {
                "name": name,
                "namespace": namespace,
                "resourceVersion": self._next_rv(),
                **meta,
            },
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
        }
        self.secrets[(namespace, name)] = body
        return body

    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.calls.append(f"get-secret {name}")
        found = self.secrets.get((namespace, name))
        return copy.deepcopy(found) if found else None

    async def create_secret(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        self.calls.append(f"create-secret {body['metadata']['name']}")
        stored = copy.deepcopy(dict(body))
        stored["metadata"]["resourceVersion"] = self._next_rv()
        self.secrets[(namespace, body["metadata"]["name"])] = stored
        return stored

    async def patch_secret(
        self, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        self.calls.append(f"patch-secret {name}")
        current = self.secrets.get((namespace, name))
        if current is None:
            return None
        current["metadata"].setdefault("annotations", {}).update(
            patch.get("metadata", {}).get("annotations", {})
        )
        current.setdefault("data", {}).update(patch.get("data", {}))
        current["metadata"]["resourceVersion"] = self._next_rv()
        return copy.deepcopy(current)

    async def patch_status(
        self, plural: str, namespace: str, name: str, status: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        self.calls.append(f"status {plural}/{name}")
        self.statuses[(plural, namespace, name)] = dict(status)
        return {"metadata": {"uid": f"uid-{name}", "resourceVersion": self._next_rv()}}


class World:
    """Objects as the index would hold them; status writes land back on them."""

    def __init__(self, api: FakeApi, *bodies: dict[str, Any]) -> None:
        self.api = api
        self.bodies = {(b["kind"], b["metadata"]["name"]): b for b in bodies}
        self.secret_bodies: dict[tuple[str, str], dict[str, Any]] = {}

    def add(self, body: dict[str, Any]) -> None:
        self.bodies[(body["kind"], body["metadata"]["name"])] = body

    def secret(self, name: str, data: dict[str, str], namespace: str = NS, **meta: Any) -> None:
        self.secret_bodies[(namespace, name)] = self.api.put_secret(namespace, name, data, **meta)

    def settle(self) -> None:
        """The watch catches up: written statuses appear on the objects."""
        for (plural, _, name), status in self.api.statuses.items():
            kind = "ModelBackend" if plural == "modelbackends" else "LlmRoute"
            body = self.bodies.get((kind, name))
            if body is not None:
                body["status"] = {k: v for k, v in status.items() if v is not None}
                body["metadata"]["resourceVersion"] = str(
                    int(body["metadata"]["resourceVersion"]) + 1
                )

    def view(self) -> View:
        return View(
            backends=latest(
                parse_backend(b) for (k, _), b in self.bodies.items() if k == "ModelBackend"
            ),
            routes=latest(parse_route(b) for (k, _), b in self.bodies.items() if k == "LlmRoute"),
            secrets=latest(parse_secret(b) for b in self.secret_bodies.values()),
            services={},
        )


def new_sync(api: FakeApi, world: World, publisher: SnapshotPublisher | None = None) -> Sync:
    sync = Sync(
        api, publisher or InMemoryPublisher(), namespace=OPERATOR_NS, view=world.view, debounce=0.01
    )
    return sync


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_a_pass_publishes_persists_and_writes_statuses_once() -> None:
    api = FakeApi()
    world = World(api, mock_backend(), route_body("r", ("mock", "m")))
    publisher = InMemoryPublisher()
    sync = new_sync(api, world, publisher)
    snapshot = run(sync.run_pass())
    assert publisher.versions == [snapshot.version]
    stored = api.secrets[(OPERATOR_NS, SNAPSHOT_SECRET)]
    assert stored["metadata"]["annotations"][VERSION_ANNOTATION] == snapshot.version
    assert stored["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "kanal"}
    assert stored["type"] == "Opaque"
    decoded = from_bytes(base64.b64decode(stored["data"][SNAPSHOT_KEY]))
    assert decoded.version == snapshot.version
    assert sorted(api.statuses) == [
        ("llmroutes", NS, "r"),
        ("modelbackends", NS, "mock"),
    ]

    # nothing changed: no publish, no persist, no status write
    world.settle()
    api.calls.clear()
    run(sync.run_pass())
    assert publisher.versions == [snapshot.version]
    assert api.calls == []


def test_a_restarted_operator_does_not_rewrite_the_same_snapshot() -> None:
    api = FakeApi()
    world = World(api, mock_backend())
    run(new_sync(api, world).run_pass())
    world.settle()
    api.calls.clear()
    fresh = new_sync(api, world)  # a new process: no memory
    run(fresh.run_pass())
    assert api.calls == [f"get-secret {SNAPSHOT_SECRET}"]


def test_referenced_secrets_are_read_when_they_change() -> None:
    api = FakeApi()
    world = World(
        api, example("ModelBackend", "openai"), route_body("r", ("openai", "gpt-4o-mini"))
    )
    sync = new_sync(api, world)
    first = run(sync.run_pass())
    assert f"{NS}/openai" not in first.backends
    assert [p.reason for p in first.problems] == ["SecretNotFound", "BackendNotFound"]
    assert sync.referenced_secrets == frozenset({(NS, "openai-key")})

    world.secret("openai-key", {"apiKey": "sk-1"})
    second = run(sync.run_pass())
    key = second.backends[f"{NS}/openai"].api_key
    assert key is not None and key.get_secret_value() == "sk-1"
    reads = api.calls.count("get-secret openai-key")
    run(sync.run_pass())
    assert api.calls.count("get-secret openai-key") == reads  # cached by resourceVersion

    world.secret("openai-key", {"apiKey": "sk-2"})  # rotation: new resourceVersion
    third = run(sync.run_pass())
    assert third.version != second.version
    key = third.backends[f"{NS}/openai"].api_key
    assert key is not None and key.get_secret_value() == "sk-2"


def test_api_key_secrets_come_from_the_index() -> None:
    api = FakeApi()
    world = World(api, mock_backend())
    sync = new_sync(api, world)
    before = run(sync.run_pass())
    world.secret("team-key", {"key": "k-1"}, labels={"kanal.dev/api-key": "true"})
    after = run(sync.run_pass())
    assert [k.secret for k in after.api_keys] == ["team-key"]
    assert after.version != before.version
    assert "get-secret team-key" not in api.calls


def test_notice_pokes_only_on_relevant_changes() -> None:
    api = FakeApi()
    world = World(api, mock_backend())
    sync = new_sync(api, world)
    entry = parse_backend(mock_backend())
    sync.notice("ModelBackend", entry.key, entry.fingerprint)
    assert sync._dirty.is_set()
    sync._dirty.clear()
    sync.notice("ModelBackend", entry.key, entry.fingerprint)  # e.g. our own status write
    assert not sync._dirty.is_set()
    sync.notice("ModelBackend", entry.key, None)  # deleted
    assert sync._dirty.is_set()
    sync._dirty.clear()

    unrelated = parse_secret({"metadata": {"name": "x", "namespace": NS, "resourceVersion": "1"}})
    sync.notice_secret(unrelated, deleted=False)
    assert not sync._dirty.is_set()
    ours = parse_secret(
        {"metadata": {"name": SNAPSHOT_SECRET, "namespace": OPERATOR_NS, "resourceVersion": "1"}}
    )
    sync.notice_secret(ours, deleted=False)
    assert not sync._dirty.is_set()
    api_key = parse_secret(
        {
            "metadata": {
                "name": "k",
                "namespace": NS,
                "resourceVersion": "1",
                "labels": {"kanal.dev/api-key": "true"},
            },
            "data": {"key": "YQ=="},
        }
    )
    sync.notice_secret(api_key, deleted=False)
    assert sync._dirty.is_set()
    sync._dirty.clear()
    sync.referenced_secrets = frozenset({(NS, "x")})
    sync.notice_secret(unrelated, deleted=False)
    assert sync._dirty.is_set()


def test_record_pokes_and_reaches_the_status() -> None:
    api = FakeApi()
    world = World(api, mock_backend())
    sync = new_sync(api, world)
    sync.record("ModelBackend", (NS, "mock"), ReconcileResult(1, "True", "Reconciled", "ok"))
    assert sync._dirty.is_set()
    run(sync.run_pass())
    conditions = api.statuses[("modelbackends", NS, "mock")]["conditions"]
    assert {c["type"]: c["status"] for c in conditions} == {"Ready": "True", "Reconciled": "True"}


def test_debounce_coalesces_a_burst_into_one_pass() -> None:
    api = FakeApi()
    world = World(api, mock_backend())
    sync = new_sync(api, world)

    async def scenario() -> int:
        task = asyncio.create_task(sync.run())
        for i in range(50):
            world.add(route_body(f"r{i}", ("mock", "m")))
            sync.poke()
            await asyncio.sleep(0)
        await asyncio.wait_for(sync.passed.wait(), 5)
        await asyncio.sleep(0.1)
        task.cancel()
        return sync.stats.passes

    assert run(scenario()) == 1
    assert sync.snapshot is not None and len(sync.snapshot.routes) == 50


def test_acks_are_shown_on_the_snapshot_secret() -> None:
    api = FakeApi()
    world = World(api, mock_backend())
    publisher = InMemoryPublisher()
    sync = new_sync(api, world, publisher)
    snapshot = run(sync.run_pass())
    run(sync._write_acks())
    assert (
        ACKS_ANNOTATION
        not in api.secrets[(OPERATOR_NS, SNAPSHOT_SECRET)]["metadata"]["annotations"]
    )
    publisher.ack("gw-1", snapshot.version)
    run(sync._write_acks())
    annotations = api.secrets[(OPERATOR_NS, SNAPSHOT_SECRET)]["metadata"]["annotations"]
    assert annotations[ACKS_ANNOTATION] == f'{{"gw-1": "{snapshot.version}"}}'
    api.calls.clear()
    run(sync._write_acks())
    assert api.calls == []


def test_first_publish_hook_runs_once_before_publishing() -> None:
    api = FakeApi()
    world = World(api, mock_backend())
    publisher = InMemoryPublisher()
    order: list[str] = []

    async def hook() -> None:
        order.append(f"hook, {len(publisher.versions)} published")

    sync = Sync(api, publisher, namespace=OPERATOR_NS, view=world.view, before_first_publish=hook)
    run(sync.run_pass())
    world.add(route_body("r", ("mock", "m")))
    run(sync.run_pass())
    assert order == ["hook, 0 published"]
    assert len(publisher.versions) == 2


def test_a_result_recorded_during_a_pass_survives_it() -> None:
    api = FakeApi()
    world = World(api, mock_backend())
    sync = new_sync(api, world)
    late = mock_backend("late")
    result = ReconcileResult(1, "True", "Reconciled", "ok")

    async def scenario() -> None:
        original = api.patch_status

        async def slow(*args: Any) -> Any:
            # while statuses are written, a new object is indexed and reconciled
            if "late" not in {b["metadata"]["name"] for b in world.bodies.values()}:
                world.add(late)
                sync.record("ModelBackend", (NS, "late"), result)
            return await original(*args)

        api.patch_status = slow  # type: ignore[method-assign]
        await sync.run_pass()
        await sync.run_pass()

    run(scenario())
    assert sync.reconciled[("ModelBackend", (NS, "late"))] == result
    conditions = api.statuses[("modelbackends", NS, "late")]["conditions"]
    assert {c["type"]: c["status"] for c in conditions}["Reconciled"] == "True"


def test_large_snapshots_are_stored_gzipped() -> None:
    import gzip

    from kanal.controller.sync import GZIP_ABOVE, encode

    api = FakeApi()
    routes = [route_body(f"route-{i:04d}", ("mock", "m")) for i in range(1000)]
    world = World(api, mock_backend(), *routes)
    snapshot = run(new_sync(api, world).run_pass())
    stored = base64.b64decode(api.secrets[(OPERATOR_NS, SNAPSHOT_SECRET)]["data"][SNAPSHOT_KEY])
    assert stored[:2] == b"\x1f\x8b"
    raw = gzip.decompress(stored)
    assert len(raw) >= GZIP_ABOVE
    assert from_bytes(raw).version == snapshot.version
    assert encode(snapshot) == stored  # deterministic
    small = run(new_sync(FakeApi(), World(FakeApi(), mock_backend())).run_pass())
    assert encode(small)[:1] == b"{"
