"""The README's agent examples run as written: the chat command and the LangChain-tool snippet (with the local
OpenAI-compatible server standing in for both the chat model and the scoring MLLM)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.agent.conftest import cli_search, ingest
from tests.agent.test_chat import _echo_top
from tests.fakes.openai_server import ChatScript, Switches, fake_openai, tool_call

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = re.search(r"## Agent: chat, tools for other agents, MCP\n(.*?)\n## ", README.read_text(), re.S).group(1)


def _block(lang: str) -> str:
    return re.search(rf"```{lang}\n(.*?)```", SECTION, re.S).group(1)


@pytest.mark.slow  # README example as a subprocess: CI's slow pass (keeps the default run under 10 min)
def test_readme_chat_command_runs_as_written(cli_env, scene_images, tmp_path) -> None:
    shutil.copy(scene_images[1], tmp_path / "photo.jpg")  # the README's file name (PNG bytes: any format works)
    script = ChatScript(
        [tool_call("multimodal_search", {"image": "attached", "k": 4}), _echo_top]
        + [tool_call("multimodal_search", {"like": 2, "k": 4}), _echo_top]
    )
    with fake_openai(Switches(chat_script=script)) as fake:
        env = {
            **cli_env,
            "RETLLM_SCORER": "openai:fake-vlm",
            "RETLLM_OPENAI_BASE_URL": fake.url,
            "OPENAI_API_KEY": "k",
            "RETLLM_CHAT_MODEL": "openai:chat-model",
            "RETLLM_CHAT_BASE_URL": fake.url,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        }
        ingest(env, scene_images)
        r = subprocess.run(
            _block("bash"), shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("Best match:") == 2 and script.exhausted
    assert re.search(r"thread \w{12}", r.stderr)


@pytest.mark.slow  # README example as a subprocess: CI's slow pass (keeps the default run under 10 min)
def test_readme_langchain_tool_example_runs_as_written(cli_env, scene_images, tmp_path) -> None:
    script = ChatScript([tool_call("multimodal_search", {"query": "a red square", "k": 3}), _echo_top])
    with fake_openai(Switches(chat_script=script, chat_models=["gpt-4o-mini"])) as fake:
        env = {
            **cli_env,
            "RETLLM_SCORER": "openai:fake-vlm",
            "RETLLM_OPENAI_BASE_URL": fake.url,
            "OPENAI_API_KEY": "k",
            "OPENAI_BASE_URL": fake.url,  # the user's OpenAI account, here the local server
        }
        ingest(env, scene_images)
        want = cli_search(env, "a red square", "-k", "3")
        code = _block("python")
        r = subprocess.run(
            [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"Best match: {want[0]['id']}"
