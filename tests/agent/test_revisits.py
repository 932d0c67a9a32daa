"""Revisit calls from the MLLM: bad arguments become error tool messages (library loop and graph alike), and a
model that calls the tool forever stops at the bound."""

from __future__ import annotations

import pytest
from langchain_core.messages import ToolMessage
from langgraph.checkpoint.memory import InMemorySaver
from retllm.agent.graph import build_graph

from retllm.errors import ScoringError
from retllm.types import Query
from tests.agent.conftest import cli_search, deps_from, ingest
from tests.fakes.openai_server import Switches, fake_openai

BAD_CALLS = [
    ({"revisit_box": [0.5, 0.5]}, "box must be [x0, y0, x1, y1]"),
    ({"revisit_box": [0.0, 0.0, 2.0, 2.0]}, "between 0 and 1"),
    ({"revisit_box": [0.6, 0.6, 0.4, 0.4]}, "is empty"),
    ({"revisit_box": ["left", 0, 1, 1]}, "box"),
    ({"revisit_id": "nope"}, "unknown candidate id 'nope'"),
    ({"revisit_arguments": "{box: top-left"}, "not valid JSON"),
]


def _env(cli_env: dict[str, str], url: str, **extra: str) -> dict[str, str]:
    return {
        **cli_env,
        "RETLLM_SCORER": "openai:fake-vlm",
        "RETLLM_OPENAI_BASE_URL": url,
        "OPENAI_API_KEY": "k",
        **extra,
    }


@pytest.mark.parametrize(("switch", "expect"), BAD_CALLS)
def test_bad_revisit_arguments_become_tool_errors(cli_env, scene_images, switch, expect) -> None:
    with fake_openai(Switches(tool_call_first=True, **switch)) as fake:
        env = _env(cli_env, fake.url)
        ingest(env, scene_images[:3])
        want = cli_search(env, "a red square", "-k", "3")
        with deps_from(env) as deps:
            out = build_graph(deps).invoke({"query": "a red square", "k": 3})
        followups = [b for b in fake.pair_requests if any(m["role"] == "tool" for m in b["messages"])]
    assert [(h.id, h.score, h.method, h.revisits) for h in out["hits"]] == [
        (h["id"], h["score"], h["method"], h["revisits"]) for h in want
    ]
    assert all(h["method"] == "logprobs" and h["revisits"] == 0 for h in want)  # answered after the error
    msgs = [m for m in out["messages"] if isinstance(m, ToolMessage) and m.name != "coarse_search"]
    assert len(msgs) == 3 and all(m.status == "error" and expect in m.content for m in msgs)
    # Both paths told the model what was wrong (CLI: 3 follow-ups, graph: 3 follow-ups).
    tool_texts = [m["content"] for b in followups for m in b["messages"] if m["role"] == "tool"]
    assert len(tool_texts) == 6 and all(expect.split("'")[0] in t for t in tool_texts)


def test_a_model_that_revisits_forever_stops_at_the_bound(cli_env, scene_images) -> None:
    with fake_openai(Switches(revisit_forever=True)) as fake:
        env = _env(cli_env, fake.url, RETLLM_MAX_REVISITS="2", RETLLM_REVISIT="on")
        ingest(env, scene_images[:3])
        with deps_from(env) as deps:
            scorer = deps.get_scorer()
            from retllm.pipeline import candidates_of

            hits = deps.retriever("default").coarse(Query(text="a red square"), k=3)
            scores = scorer.score(Query(text="a red square"), candidates_of(hits))
            lib_calls = fake.forever_calls
            saver = InMemorySaver()
            g = build_graph(deps, checkpointer=saver)
            cfg = {"configurable": {"thread_id": "x"}}
            with pytest.raises(ScoringError, match="failed for all 3 pair"):
                g.invoke({"query": "a red square", "k": 3}, cfg)
            state = g.get_state(cfg).values
            graph_calls = fake.forever_calls - lib_calls
    assert [s.revisits for s in scores] == [2, 2, 2] and all(s.failed for s in scores)
    assert all("RETLLM_MAX_REVISITS=2" in s.error for s in scores)
    assert lib_calls == 9 and graph_calls == 9  # 3 requests per pair: two revisits, then the bound
    assert [t.revisits for t in state["turns"]] == [2, 2, 2] and all(t.done for t in state["turns"])
    revisits = [m for m in state["messages"] if isinstance(m, ToolMessage) and m.name == "revisit_image"]
    assert len(revisits) == 6
