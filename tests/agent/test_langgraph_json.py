"""langgraph.json names importable graphs (what `langgraph dev` loads): the retrieval graph and the chat graph."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_langgraph_json_graphs_load(monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")  # the default chat model is built, never called
    spec = json.loads((ROOT / "langgraph.json").read_text())
    assert set(spec["graphs"]) == {"retrieval", "chat"}
    for name, target in spec["graphs"].items():
        path, attr = target.split(":")
        obj = runpy.run_path(str(ROOT / path))[attr]
        graph = obj() if callable(obj) and not hasattr(obj, "invoke") else obj
        nodes = set(graph.get_graph().nodes)
        if name == "retrieval":
            assert {"plan", "coarse_search", "score", "revisit", "rank"} <= nodes
        else:
            assert {"model", "tools"} <= nodes
