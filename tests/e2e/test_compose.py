"""docker-compose.yml and the Dockerfile: validated by Compose itself, and the properties that matter read from them.

No Docker engine is needed: ``docker-compose config`` parses, validates and interpolates the file without one.
Where no Compose binary is installed the validation tests skip, unless ``RETLLM_REQUIRE_COMPOSE=1`` (CI), where
they fail. Nothing here builds or runs an image.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fakes.local_http import running_server

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
TOKEN = "t" * 32  # RETLLM_API_TOKEN is required (`:?`) and at least 16 characters
PINNED = r"v\d+\.\d+\.\d+"


def compose_command() -> list[str]:
    """``docker-compose`` (Debian's 1.29), else the ``docker compose`` plugin; skip or fail when neither is there."""
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    if os.environ.get("RETLLM_REQUIRE_COMPOSE") == "1":
        pytest.fail("RETLLM_REQUIRE_COMPOSE=1 but no docker-compose binary (apt-get install -y docker-compose)")
    pytest.skip("no docker-compose binary (apt-get install -y docker-compose); CI sets RETLLM_REQUIRE_COMPOSE=1")


def run_compose(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("RETLLM_", "QDRANT_", "OPENAI_", "HF_"))}
    return subprocess.run(
        [*compose_command(), "-f", str(COMPOSE), *args],
        cwd=ROOT,
        env=clean | env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("profile", [[], ["--profile", "hosted"]], ids=["default", "hosted"])
def test_compose_config_validates(profile: list[str]) -> None:
    res = run_compose(*profile, "config", "-q", env={"RETLLM_API_TOKEN": TOKEN})
    assert res.returncode == 0, res.stderr


def test_compose_requires_the_api_token() -> None:
    res = run_compose("config", "-q", env={})
    assert res.returncode != 0
    assert "set RETLLM_API_TOKEN" in res.stderr


def test_compose_interpolates_one_model_for_vllm_and_retllm() -> None:
    for model in (None, "Qwen/Qwen2.5-VL-7B-Instruct"):
        env = {"RETLLM_API_TOKEN": TOKEN} | ({"RETLLM_VLLM_MODEL": model} if model else {})
        res = run_compose("config", env=env)
        assert res.returncode == 0, res.stderr
        services = yaml.safe_load(res.stdout)["services"]
        served = services["vllm"]["command"][0]
        assert served == (model or "Qwen/Qwen2.5-VL-3B-Instruct")
        env_out = services["retllm"]["environment"]
        assert env_out["RETLLM_SCORER"] == env_out["RETLLM_CHAT_MODEL"] == f"openai:{served}"
        assert env_out["RETLLM_API_TOKEN"] == TOKEN


# The file as written (no interpolation): the deployment's shape.


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())  # SafeLoader resolves the `<<: *qdrant` merge keys
    assert isinstance(data, dict)
    return data


def flag(command: list[str], name: str) -> str:
    """The value after ``name`` in an argument list."""
    assert name in command, f"{name} missing from {command}"
    return command[command.index(name) + 1]


def health_test(service: dict[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    assert test[0] in ("CMD", "CMD-SHELL"), test
    return " ".join(test[1:])


def test_three_qdrant_peers_on_one_pinned_image(spec: dict[str, Any]) -> None:
    services = spec["services"]
    nodes = sorted(n for n in services if n.startswith("qdrant"))
    assert nodes == ["qdrant-1", "qdrant-2", "qdrant-3"]
    images = {services[n]["image"] for n in nodes}
    assert len(images) == 1
    (image,) = images
    assert re.fullmatch(rf"qdrant/qdrant:{PINNED}", image), image
    for i, name in enumerate(nodes, start=1):
        node = services[name]
        assert node["environment"]["QDRANT__CLUSTER__ENABLED"] == "true"
        assert node["environment"]["QDRANT__SERVICE__API_KEY"] == "${QDRANT_API_KEY:-}"
        cmd = node["command"]
        assert flag(cmd, "--uri") == f"http://{name}:6335"
        if i == 1:
            assert "--bootstrap" not in cmd
        else:
            assert flag(cmd, "--bootstrap") == "http://qdrant-1:6335"
            assert node["depends_on"]["qdrant-1"]["condition"] == "service_healthy"
        (volume,) = node["volumes"]
        source, target = volume.split(":")
        assert target == "/qdrant/storage" and source in spec["volumes"]
        assert "/readyz" in health_test(node) and "curl" not in health_test(node)
    assert len({services[n]["volumes"][0] for n in nodes}) == 3  # one volume each


def test_every_service_has_a_healthcheck(spec: dict[str, Any]) -> None:
    for name, service in spec["services"].items():
        assert health_test(service), name


def test_vllm_serves_logprobs_tools_and_images_on_a_gpu(spec: dict[str, Any]) -> None:
    vllm = spec["services"]["vllm"]
    assert re.fullmatch(rf"vllm/vllm-openai:{PINNED}", vllm["image"]), vllm["image"]
    cmd = [str(c) for c in vllm["command"]]
    assert cmd[0] == "${RETLLM_VLLM_MODEL:-Qwen/Qwen2.5-VL-3B-Instruct}"
    assert int(flag(cmd, "--max-logprobs")) >= 20  # the scorer asks top_logprobs=20
    assert "--enable-auto-tool-choice" in cmd and flag(cmd, "--tool-call-parser") == "hermes"
    assert json.loads(flag(cmd, "--limit-mm-per-prompt"))["image"] >= 2
    assert int(flag(cmd, "--max-model-len")) >= 8192
    (device,) = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert vllm["environment"]["HF_TOKEN"] == "${HF_TOKEN:-}"
    assert any(v.endswith(":/root/.cache/huggingface") for v in vllm["volumes"])
    assert "/health" in health_test(vllm)
    assert "ports" not in vllm  # only retllm talks to it


def test_retllm_waits_for_a_healthy_cluster_and_vllm(spec: dict[str, Any]) -> None:
    services = spec["services"]
    app = services["retllm"]
    assert app["build"] == "."
    assert "profiles" not in app
    deps = app["depends_on"]
    assert set(deps) == {"qdrant-1", "qdrant-2", "qdrant-3", "vllm"}
    assert all(d["condition"] == "service_healthy" for d in deps.values())
    env = app["environment"]
    assert env["RETLLM_QDRANT_URL"] == "http://qdrant-1:6333"
    assert env["RETLLM_QDRANT_API_KEY"] == "${QDRANT_API_KEY:-}"
    assert env["RETLLM_OPENAI_BASE_URL"] == env["RETLLM_CHAT_BASE_URL"] == "http://vllm:8000/v1"
    served = services["vllm"]["command"][0]
    assert env["RETLLM_SCORER"] == env["RETLLM_CHAT_MODEL"] == f"openai:{served}"
    assert env["OPENAI_API_KEY"]
    assert env["RETLLM_API_TOKEN"].startswith("${RETLLM_API_TOKEN:?")
    assert "8080:8080" in app["ports"]
    assert "/readyz" in health_test(app)
    assert any(v.endswith(":/data") for v in app["volumes"])


def test_hosted_profile_runs_alone_without_gpu_or_qdrant(spec: dict[str, Any]) -> None:
    services = spec["services"]
    hosted = services["retllm-hosted"]
    assert hosted["profiles"] == ["hosted"]
    assert [n for n, s in services.items() if s.get("profiles")] == ["retllm-hosted"]  # `up` starts the rest
    assert "deploy" not in hosted and "depends_on" not in hosted
    env = hosted["environment"]
    assert "RETLLM_QDRANT_URL" not in env and "RETLLM_QDRANT_API_KEY" not in env  # the embedded store
    assert env["RETLLM_SCORER"].startswith("openai:") and "OPENAI_API_KEY" in env
    assert "RETLLM_OPENAI_BASE_URL" not in env  # OpenAI's own endpoint
    assert env["RETLLM_API_TOKEN"].startswith("${RETLLM_API_TOKEN:?")
    published = {p.split(":")[0] for s in services.values() for p in s.get("ports", [])}
    assert len(published) == sum(len(s.get("ports", [])) for s in services.values())  # no port clash


def test_only_the_token_is_mandatory() -> None:
    """`${VAR:?}` fails `config` and `up` for every profile: only the API token may be required."""
    assert set(re.findall(r"\$\{(\w+):\?", COMPOSE.read_text())) == {"RETLLM_API_TOKEN"}


# The health checks' commands, run here against a local server standing in for each service's port.


@contextmanager
def status_server(status: int) -> Iterator[int]:
    """Answers every GET with ``status``; yields the port. Records nothing: only the exit code matters."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

    with running_server(Handler) as server:
        yield server.server_address[1]


def run_check(argv: list[str], port: int, real_port: int) -> int:
    argv = [
        a.replace(f"127.0.0.1:{real_port}", f"127.0.0.1:{port}").replace(f"/{real_port} ", f"/{port} ") for a in argv
    ]
    if argv[0] in ("python", "python3"):
        argv[0] = sys.executable
    elif argv[0] == "bash" and not shutil.which("bash"):
        pytest.skip("no bash")
    return subprocess.run(argv, capture_output=True, timeout=30).returncode


@pytest.mark.parametrize(
    ("service", "real_port"), [("qdrant-1", 6333), ("vllm", 8000), ("retllm", 8080), ("retllm-hosted", 8080)]
)
def test_healthcheck_commands_pass_on_200_and_fail_on_503(spec: dict[str, Any], service: str, real_port: int) -> None:
    argv = spec["services"][service]["healthcheck"]["test"][1:]
    assert spec["services"][service]["healthcheck"]["test"][0] == "CMD"
    for status, ok in ((200, True), (503, False)):
        with status_server(status) as port:
            assert (run_check(argv, port, real_port) == 0) is ok, (service, status)
    with status_server(200) as port:
        pass  # closed: nothing listens there any more
    assert run_check(argv, port, real_port) != 0


# The Dockerfile (no engine here to build it: its instructions are read as text).


def instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines]


def test_dockerfile(spec: dict[str, Any]) -> None:
    ins = instructions()
    by = lambda k: [v for i, v in ins if i == k]  # noqa: E731
    (base,) = by("FROM")
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", base), base
    run = " ".join(by("RUN"))
    assert "download.pytorch.org/whl/cpu" in run and "'.[serve]'" in run
    users = by("USER")
    assert users and users[-1] not in ("root", "0")
    env = " ".join(by("ENV"))
    assert "RETLLM_DATA_DIR=/data" in env and re.search(r"HF_HOME=/data/\S+", env)
    assert '"/data"' in by("VOLUME")[0]
    assert by("EXPOSE") == ["8080"]
    (health,) = by("HEALTHCHECK")
    assert "/healthz" in health and "curl" not in health
    argv = json.loads(health[health.index("CMD") + 3 :])
    with status_server(200) as port:
        assert run_check(argv, port, 8080) == 0
    assert json.loads(by("CMD")[-1]) == ["retllm", "serve", "--host", "0.0.0.0", "--port", "8080"]
    # Every folder the package is built from is copied in (pyproject's package-dir mapping).
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    copied = {v.split()[0] for v in by("COPY")}
    assert set(pyproject["tool"]["setuptools"]["package-dir"].values()) <= copied
    assert {"pyproject.toml", "README.md"} <= set(" ".join(by("COPY")).split())


def test_dockerignore_keeps_the_context_small() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    ignored = {ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")}
    assert {".venv", ".git", "tests", "**/__pycache__", ".env"} <= ignored
    assert not {"retllm", "agent", "tools", "prompts", "pyproject.toml", "README.md"} & ignored
