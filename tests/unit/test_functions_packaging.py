"""The functions' packaging agrees with the rest of kanal: the operator's Knative Service
starts a prompt function that finds its whole configuration, each func.yaml has the fields
the func CLI accepts, and each Dockerfile runs a console script kanal installs."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from kanal.api import LlmRoute
from kanal.controller.builders import DEFAULT_PROMPT_FUNCTION_IMAGE, FUNCTION_PORT, function_service
from kanal.prompts import render
from kanal_functions.prompt import target_from_env
from kanal_functions.runtime import listen_address

ROOT = Path(__file__).parents[2]
FUNCTIONS = ("prompt", "summarize")
# the func.yaml fields of knative/func's schema (schema/func_yaml-schema.json)
FUNC_FIELDS = {
    "specVersion", "name", "domain", "runtime", "registry", "image", "namespace", "created",
    "invoke", "build", "run", "deploy",
}  # fmt: skip


def ksvc_env(route_yaml: str) -> dict[str, str]:
    route = LlmRoute.model_validate(yaml.safe_load(route_yaml))
    svc = function_service(route, "uid-1")
    assert svc is not None
    container = svc["spec"]["template"]["spec"]["containers"][0]
    assert container["ports"] == [{"name": "http1", "containerPort": FUNCTION_PORT}]
    return {e["name"]: e["value"] for e in container["env"]}


def test_the_operators_knative_service_configures_the_prompt_function() -> None:
    env = ksvc_env((ROOT / "examples/quickstart/haiku.yaml").read_text())
    target = target_from_env(env)
    assert (target.route, target.model) == ("default/haiku", "haiku")
    assert (
        render(target.prompt, {"topic": "rain"}).user == "Write a haiku about rain, in a calm mood."
    )
    # Knative sets PORT to the containerPort; the function's default is the same
    assert listen_address({})[1] == FUNCTION_PORT == listen_address({"PORT": "8080"})[1]


def test_a_routes_own_model_name_is_what_the_function_calls() -> None:
    env = ksvc_env(
        """
apiVersion: kanal.dev/v1alpha1
kind: LlmRoute
metadata: {name: greet, namespace: team-a}
spec:
  model: greeter
  backends: [{backendRef: {name: mock}, model: mock-small}]
  prompt: {template: "Hi {{name}}", expose: {function: true}}
"""
    )
    target = target_from_env(env)
    assert (target.route, target.model) == ("team-a/greet", "greeter")
    assert json.loads(env["KANAL_PROMPT"]) == {
        "template": "Hi {{name}}",
        "expose": {"function": True},
    }


@pytest.mark.parametrize("name", FUNCTIONS)
def test_func_yaml(name: str) -> None:
    func: dict[str, Any] = yaml.safe_load((ROOT / "functions" / name / "func.yaml").read_text())
    assert set(func) <= FUNC_FIELDS
    assert {"specVersion", "created", "name", "runtime", "image"} <= set(func)
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", func["name"])
    assert func["runtime"] == "python" and func["invoke"] == "http"
    assert func["deploy"]["healthEndpoints"] == {"liveness": "/healthz", "readiness": "/healthz"}
    assert func["image"].startswith("ghcr.io/kanal-dev/kanal-" + name + ":")
    if name == "prompt":  # the image the operator runs by default
        assert func["image"].rpartition(":")[0] == DEFAULT_PROMPT_FUNCTION_IMAGE.rpartition(":")[0]
    names = {e["name"] for e in func["run"]["envs"]}
    assert "KANAL_GATEWAY_GRPC" in names


@pytest.mark.parametrize("name", FUNCTIONS)
def test_dockerfile_runs_an_installed_console_script_as_non_root(name: str) -> None:
    text = (ROOT / "functions" / name / "Dockerfile").read_text()
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    entry = re.search(r'^ENTRYPOINT \["([^"]+)"\]$', text, re.M)
    assert entry is not None and entry.group(1) == f"kanal-fn-{name}"
    assert scripts[entry.group(1)] == f"kanal_functions.{name}:main"
    stages = re.findall(r"^FROM (\S+)", text, re.M)
    assert len(stages) == 2 and len(set(stages)) == 1  # same base: the venv's python is there
    assert ":" in stages[0] and not stages[0].endswith(":latest")
    assert re.search(r"^USER 65532", text, re.M) and f"EXPOSE {FUNCTION_PORT}" in text
    final = text.split("\nFROM ")[-1]
    assert "RUN " not in final and "COPY --from=build /opt/venv /opt/venv" in final
