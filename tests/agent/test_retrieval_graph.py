"""The retrieval graph (START -> coarse_search tool -> score <-> revisit tool -> rank) against `retllm search`."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.messages import AIMessage, ToolMessage
from retllm.agent.context import Context
from retllm.agent.graph import build_graph, graph
from retllm.agent.state import InputState

from tests.agent.conftest import cli_search, deps_from, ingest
from tests.fakes.openai_server import Switches, fake_openai

FIELDS = ("id", "rank", "score", "p_true", "entropy", "method", "retraced", "revisits", "coarse_rank", "error")


def _same(graph_hits: list[Any], cli_hits: list[dict[str, Any]]) -> None:
    got = [{f: getattr(h, f) for f in FIELDS} for h in graph_hits]
    want = [{f: h[f] for f in FIELDS} for h in cli_hits]
    assert got == want


def _hf_env(cli_env: dict[str, str], tiny_vlm_dirs: dict[str, Any]) -> dict[str, str]:
    return {
        **cli_env,
        "RETLLM_SCORER": f"hf:{tiny_vlm_dirs['qwen2_vl']}",
        "RETLLM_RETRACE__START": "0",
        "RETLLM_RETRACE__END": "3",
        "RETLLM_RETRACE__THRESHOLD": "-1",
        # Bit-identical mode: each new image goes through the vision tower alone, so a score does not depend on
        # which images an earlier query left in the vision cache (the graph's process vs. a fresh CLI process).
        "RETLLM_SCORER_CROSS_QUERY": "false",
    }


def test_graph_ranking_equals_cli_search_with_a_local_mllm(cli_env, tiny_vlm_dirs, scene_images) -> None:
    env = _hf_env(cli_env, tiny_vlm_dirs)
    ingest(env, scene_images)
    want = cli_search(env, "a red square", "-k", "5", "--top", "4")
    image_want = cli_search(env, "--image", str(scene_images[2]), "-k", "4")
    with deps_from(env) as deps:
        out = build_graph(deps).invoke({"query": "a red square", "k": 5, "top": 4})
        # The module-level graph (langgraph.json) takes the same dependencies from the run's context.
        image_out = graph.invoke({"image": str(scene_images[2]), "k": 4}, context=Context(deps=deps))
    _same(out["hits"], want)
    _same(image_out["hits"], image_want)
    assert all(h["method"] == "logits" and h["retraced"] == 2 for h in want)
    calls = [tc for m in out["messages"] if isinstance(m, AIMessage) for tc in m.tool_calls]
    assert [c["name"] for c in calls] == ["coarse_search"]  # a real tool call through the ToolNode
    assert [m.name for m in out["messages"] if isinstance(m, ToolMessage)] == ["coarse_search"]


def test_graph_ranking_equals_cli_search_with_an_endpoint_that_revisits(cli_env, scene_images) -> None:
    with fake_openai(Switches(tool_call_first=True, revisit_box=[0.0, 0.0, 0.5, 0.5])) as fake:
        env = {**cli_env, "RETLLM_SCORER": "openai:fake-vlm", "RETLLM_OPENAI_BASE_URL": fake.url, "OPENAI_API_KEY": "k"}
        ingest(env, scene_images)
        want = cli_search(env, "a red square", "-k", "5")
        n_cli = len(fake.crop_checks)
        chunks = []
        with deps_from(env) as deps:
            for mode, chunk in build_graph(deps).stream(
                {"query": "a red square", "k": 5}, stream_mode=["custom", "values"]
            ):
                chunks.append((mode, chunk))
        checks = fake.crop_checks[n_cli:]
    out = [c for m, c in chunks if m == "values"][-1]
    _same(out["hits"], want)
    assert all(h["revisits"] == 1 and h["method"] == "logprobs" for h in want)
    assert checks == [True] * 5  # the server saw the crop it asked for, through the graph's ToolNode
    revisit_msgs = [m for m in out["messages"] if isinstance(m, ToolMessage) and m.name == "revisit_image"]
    assert len(revisit_msgs) == 5 and all(m.status == "success" for m in revisit_msgs)
    assert all(m.artifact["box"] == [0.0, 0.0, 0.5, 0.5] for m in revisit_msgs)
    assert all(isinstance(t.candidate.image, str) for t in out["turns"])  # references, never bytes
    custom = [c for m, c in chunks if m == "custom"]
    kinds = [e["event"] for e in custom]
    assert kinds[:2] == ["stage", "stage"] and kinds[-1] == "final"
    assert kinds.count("candidate") == 5
    assert [e["status"] for e in custom if e["event"] == "revisit"].count("requested") == 5
    assert [e["status"] for e in custom if e["event"] == "revisit"].count("done") == 5
    assert [e["done"] for e in custom if e["event"] == "candidate"] == [1, 2, 3, 4, 5]
    assert custom[-1]["hits"][0]["id"] == want[0]["id"]


BAD_REQUESTS = [
    ({}, "give a query text, an image, or both"),
    ({"query": "x", "k": 0}, "k: Input should be greater than or equal to 1"),
    ({"query": "x", "collection": "nope"}, "no collection 'nope'"),
    ({"query": "x", "vector": "colour"}, "vector: Input should be"),
    ({"image": "/does/not/exist.png"}, "exist.png"),
]


def test_bad_requests_end_in_an_error_not_an_exception(cli_env, scene_images) -> None:
    """Each bad request, one after another on one graph (one ingest: the CLI subprocess is the slow part)."""
    env = {**cli_env, "RETLLM_SCORER": "openai:never-called", "RETLLM_OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}
    ingest(env, scene_images[:2])
    with deps_from(env) as deps:
        graph = build_graph(deps)
        for request_, expect in BAD_REQUESTS:
            out = graph.invoke(request_)
            assert out["hits"] == [] and expect in out["error"], request_
            assert isinstance(out["messages"][-1], ToolMessage) and out["messages"][-1].status == "error", request_


@pytest.mark.slow  # two CLI searches and a local MLLM: CI's slow pass (keeps the default run under 10 min)
def test_a_reused_thread_answers_each_request_afresh(cli_env, tiny_vlm_dirs, scene_images, tmp_path) -> None:
    from langgraph.checkpoint.memory import InMemorySaver

    env = _hf_env(cli_env, tiny_vlm_dirs)
    ingest(env, scene_images)
    want_a = cli_search(env, "a red square", "-k", "3")
    want_b = cli_search(env, "--image", str(scene_images[4]), "-k", "2")
    with deps_from(env) as deps:
        g = build_graph(deps, checkpointer=InMemorySaver())
        cfg = {"configurable": {"thread_id": "studio-thread"}}
        a = g.invoke({"query": "a red square", "k": 3}, cfg)
        # A whole request (InputState): options it leaves out go back to their defaults, not the last run's.
        b = g.invoke(InputState(image=str(scene_images[4]), k=2), cfg)
    _same(a["hits"], want_a)
    _same(b["hits"], want_b)
    assert len(b["turns"]) == 2 and b["search"]["image"] == str(scene_images[4]) and b["search"]["query"] is None


def test_min_score_with_the_fine_stage_off_is_refused(cli_env, scene_images) -> None:
    ingest(cli_env, scene_images[:2])
    with deps_from(cli_env, coarse_only=True) as deps:
        out = build_graph(deps).invoke({"query": "x", "k": 2, "min_score": 0.5})
        coarse = build_graph(deps).invoke({"query": "x", "k": 2})
    assert out["hits"] == [] and "min_score filters fine scores" in out["error"]
    assert [h.score for h in coarse["hits"]] == [None, None] and coarse["error"] is None
