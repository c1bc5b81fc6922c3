"""Two `kanal operator --peering` replicas: one acts, the other waits, and takes over."""

from __future__ import annotations

import time
from typing import Any

import pytest
import yaml
from opkit import Operators, ksvc, wait_for

from harness import Kube

pytestmark = pytest.mark.usefixtures("peering_crd_installed")


def served(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "kanal.dev/v1alpha1",
        "kind": "ModelBackend",
        "metadata": {"name": name},
        "spec": {
            "provider": "openai-compatible",
            "serving": {"image": "example.test/model:1"},
            "models": [{"name": "m", "contextWindow": 1000}],
        },
    }


def peers(kube: Kube) -> dict[str, Any]:
    obj = kube.custom.get_namespaced_custom_object(
        "kopf.dev", "v1", kube.namespace, "kopfpeerings", "kanal"
    )
    return dict(obj.get("status") or {})


def test_two_replicas_one_active(kube: Kube, operators: Operators) -> None:
    flags = ("--peering", "--peering-lifetime", "15")
    leader = operators.start(*flags, name="leader")
    # the peering object is created by the operator; the leader registers in it
    wait_for("leader in the peering", lambda: any("leader" in p for p in peers(kube)))
    standby = operators.start(*flags, name="standby")
    wait_for("both in the peering", lambda: len(peers(kube)) == 2)
    # with mandatory peering a replica starts paused; the leader resumed at once, the later
    # replica (lower priority) sees the leader and stays paused
    leader.wait_log("Resuming operations")
    time.sleep(2.0)
    assert "Resuming operations" not in standby.log()

    kube.kubectl("apply", "-f", "-", input=yaml.safe_dump(served("one")))
    wait_for("ksvc one", lambda: ksvc(kube, "one"))
    wait_for("routing snapshot by the leader", lambda: "routing snapshot" in leader.log())
    leader.wait_log("created Knative Service")
    assert "created Knative Service" not in standby.log()
    assert "routing snapshot" not in standby.log()

    # the leader exits cleanly (removes itself from the peering): the standby takes over
    assert leader.stop() == 0, leader.log()
    standby.wait_log("Resuming operations", timeout=30)
    kube.kubectl("apply", "-f", "-", input=yaml.safe_dump(served("two")))
    wait_for("ksvc two", lambda: ksvc(kube, "two"), timeout=30)
    standby.wait_log("created Knative Service")
    assert "created Knative Service" in standby.log()
    # it found the first one as it was: no duplicate, no update
    assert "updated Knative Service" not in standby.log()
    assert sorted(peers(kube)) == [p for p in peers(kube) if "standby" in p]


def test_standby_takes_over_from_a_killed_leader(kube: Kube, operators: Operators) -> None:
    flags = ("--peering", "--peering-lifetime", "4")
    leader = operators.start(*flags, name="leader")
    leader.wait_log("Resuming operations")
    standby = operators.start(*flags, name="standby")
    wait_for("both in the peering", lambda: len(peers(kube)) == 2)
    kube.kubectl("apply", "-f", "-", input=yaml.safe_dump(served("one")))
    leader.wait_log("created Knative Service")

    # SIGKILL: no goodbye in the peering object; the standby waits out the leader's lifetime
    leader.kill()
    killed = time.monotonic()
    standby.wait_log("Resuming operations", timeout=30)
    takeover = time.monotonic() - killed
    assert takeover < 15, f"takeover took {takeover:.1f}s"
    kube.kubectl("apply", "-f", "-", input=yaml.safe_dump(served("two")))
    wait_for("ksvc two", lambda: ksvc(kube, "two"), timeout=30)
    assert "updated Knative Service" not in standby.log()
