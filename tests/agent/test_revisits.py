"""Revisit calls from the MLLM: bad arguments become error tool messages (library loop and graph alike), and a
model that calls the tool forever stops at the bound."""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage, ToolMessage
from langgraph.checkpoint.memory import InMemorySaver
from retllm.agent.graph import build_graph

from retllm.errors import ScoringError
from retllm.types import Query
from tests.agent.conftest import deps_from
from tests.fakes.openai_server import Switches, fake_openai

BOX = [0.0, 0.0, 0.5, 0.5]
# (what the MLLM's revisit call does wrong, fake-server switches, RETLLM_MAX_REVISITS, what the tool message says)
CASES = [
    ("malformed box", {"revisit_box": [0.5, 0.5]}, 1, "box must be [x0, y0, x1, y1]"),
    ("box out of range", {"revisit_box": [0.0, 0.0, 2.0, 2.0]}, 1, "between 0 and 1"),
    ("empty box", {"revisit_box": [0.6, 0.6, 0.4, 0.4]}, 1, "is empty"),
    ("box of words", {"revisit_box": ["left", 0, 1, 1]}, 1, "box must be [x0, y0, x1, y1] with numbers"),
    ("box of strings", {"revisit_box": ["0", "0", "0.5", "0.5"]}, 1, "box must be [x0, y0, x1, y1] with numbers"),
    ("unknown id", {"revisit_id": "nope"}, 1, "unknown candidate id 'nope'"),
    ("another pair's id", {"revisit_id": "s1"}, 1, "unknown candidate id 's1'"),
    ("not JSON", {"revisit_arguments": "{box: top-left"}, 1, "not valid JSON"),
    ("an extra key", {"revisit_calls": [("c1", {"candidate_id": "{cid}", "box": BOX, "why": "zoom"})]}, 1, None),
    (
        "a repeated call id",
        {"revisit_calls": [("call_0", {"candidate_id": "{cid}", "box": BOX}), ("call_0", {"candidate_id": "{cid}"})]},
        2,
        None,
    ),
]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory, tiny_clip_spec: str, embedder) -> dict[str, str]:
    """One collection for the module, ingested in-process (ids s0-s2): the comparisons below run the library's
    ``Retriever.search`` (what ``retllm search`` runs) and the graph side by side, without a CLI process each."""
    import numpy as np
    from PIL import Image

    from retllm.index.edge import EdgeIndex
    from retllm.ingest import Ingestor
    from retllm.types import Item

    root = tmp_path_factory.mktemp("revisit_scenes")
    items = []
    for i in range(3):
        arr = np.random.default_rng(7 + i).integers(0, 256, (40 + 8 * i, 56 + 4 * i, 3), dtype=np.uint8)
        Image.fromarray(arr).save(root / f"s{i}.png")
        items.append(Item(id=f"s{i}", image=str(root / f"s{i}.png")))
    with EdgeIndex(root / "data" / "edge") as index:
        Ingestor(embedder, index, "default").add(items)
    return {"RETLLM_DATA_DIR": str(root / "data"), "RETLLM_EMBEDDER": tiny_clip_spec, "RETLLM_DEVICE": "cpu"}


def _env(base: dict[str, str], url: str, **extra: str) -> dict[str, str]:
    scorer = {"RETLLM_SCORER": "openai:fake-vlm", "RETLLM_OPENAI_BASE_URL": url, "OPENAI_API_KEY": "k"}
    return {**base, **scorer, **extra}


def _tool_texts(bodies: list[dict]) -> list[str]:
    return [m["content"] for b in bodies for m in b["messages"] if m["role"] == "tool"]


def _search_both(env: dict[str, str], embedder, fake, k: int) -> tuple[list, dict, list, list]:
    """(library hits, graph output, library follow-up requests, graph follow-up requests)."""
    with deps_from(env, embedder=embedder) as deps:
        want = deps.retriever("default").search(Query(text="a red square"), k=k)
        n_lib = len(fake.pair_requests)
        out = build_graph(deps).invoke({"query": "a red square", "k": k})
    lib = [b for b in fake.pair_requests[:n_lib] if len(b["messages"]) > 1]
    graph = [b for b in fake.pair_requests[n_lib:] if len(b["messages"]) > 1]
    return want, out, lib, graph


@pytest.mark.parametrize(("case", "switch", "bound", "expect"), CASES, ids=[c[0] for c in CASES])
def test_revisit_calls_are_judged_alike_by_the_library_and_the_graph(
    scenes, embedder, case, switch, bound, expect
) -> None:
    with fake_openai(Switches(tool_call_first=True, **switch)) as fake:
        env = _env(scenes, fake.url, RETLLM_MAX_REVISITS=str(bound))
        want, out, lib_followups, graph_followups = _search_both(env, embedder, fake, 3)
    fields = ("id", "score", "method", "revisits", "error")
    assert [tuple(getattr(h, f) for f in fields) for h in out["hits"]] == [
        tuple(getattr(h, f) for f in fields) for h in want
    ]
    assert all(h.method == "logprobs" for h in want)  # answered after the tool message, never dropped
    msgs = [m for m in out["messages"] if isinstance(m, ToolMessage) and m.name != "coarse_search"]
    if expect is None:
        assert all(m.status == "success" for m in msgs) and all(h.revisits == bound for h in want)
    else:
        errors = [m for m in msgs if m.status == "error"]
        assert errors and all(expect in m.content for m in errors)
        assert len(errors) == sum(h.revisits == 0 for h in want)  # one error per pair that saw nothing
        for bodies in (lib_followups, graph_followups):  # the MLLM was told what was wrong, on both paths
            texts = [t for t in _tool_texts(bodies) if t.startswith("error")]
            assert len(texts) == len(errors) and all(expect in t for t in texts)
    # Every tool message answers a call of the model turn before it (a valid history for any chat API).
    called = set()
    for m in out["messages"]:
        if isinstance(m, AIMessage):
            called |= {c["id"] for c in m.tool_calls} | {c["id"] for c in m.invalid_tool_calls}
        elif isinstance(m, ToolMessage):
            assert m.tool_call_id in called


def test_calls_past_the_bound_are_answered_in_call_order(scenes, embedder) -> None:
    calls = [(name, {"candidate_id": "{cid}", "box": BOX}) for name in ("A", "B", "C")]
    with fake_openai(Switches(tool_call_first=True, revisit_calls=calls)) as fake:
        env = _env(scenes, fake.url, RETLLM_MAX_REVISITS="1")
        want, out, lib_followups, graph_followups = _search_both(env, embedder, fake, 2)
    followups = lib_followups + graph_followups
    assert len(followups) == 4  # two pairs, the library and the graph
    for b in followups:
        tools = [m for m in b["messages"] if m["role"] == "tool"]
        assert [m["tool_call_id"] for m in tools] == ["A", "B", "C"]
        assert "no revisits left" not in tools[0]["content"]
        assert all("no revisits left" in m["content"] for m in tools[1:])
    assert [h.revisits for h in want] == [1, 1] and [h.revisits for h in out["hits"]] == [1, 1]


def test_a_model_that_revisits_forever_stops_at_the_bound(scenes, embedder) -> None:
    with fake_openai(Switches(revisit_forever=True)) as fake:
        env = _env(scenes, fake.url, RETLLM_MAX_REVISITS="2", RETLLM_REVISIT="on")
        with deps_from(env, embedder=embedder) as deps:
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
