"""The retrieval graph, wired top to bottom:

    START -> plan -> coarse_search (ToolNode) -> score <-> revisit (ToolNode) -> rank -> END
              |                  |
              +------------------+--> failed -> END   (the request, or the coarse search's arguments, refused)

``build_graph(deps)`` compiles it for callers with their own dependencies; the module-level ``graph`` takes them
from the run's context (:class:`~retllm.agent.context.Context`) or the environment, for ``langgraph.json``.
"""

from __future__ import annotations

from typing import Any

from langgraph.graph import END, START, StateGraph
from langgraph.prebuilt import ToolNode
from retllm.agent.context import Context
from retllm.agent.nodes import RetrievalNodes, coarse_failed, needs_revisit, request_refused
from retllm.agent.state import InputState, State
from retllm.tools.deps import Deps
from retllm.tools.langchain_tools import coarse_search_tool, revisit_image_tool

RECURSION_LIMIT = 64  # score and revisit alternate at most RETLLM_MAX_REVISITS (<= 8) times


def build_graph(deps: Deps | None = None, *, checkpointer: Any = None) -> Any:
    """The compiled retrieval graph; final ranked hits end up in ``state["hits"]``."""
    nodes = RetrievalNodes(deps)
    builder = StateGraph(State, input_schema=InputState, context_schema=Context)
    builder.add_node("plan", nodes.plan_search)
    builder.add_node("coarse_search", ToolNode([coarse_search_tool(deps)]))
    builder.add_node("failed", nodes.failed)
    builder.add_node("score", nodes.score)
    builder.add_node("revisit", ToolNode([revisit_image_tool(deps)]))
    builder.add_node("rank", nodes.rank)

    builder.add_edge(START, "plan")
    builder.add_conditional_edges("plan", request_refused, {True: "failed", False: "coarse_search"})
    builder.add_conditional_edges("coarse_search", coarse_failed, {True: "failed", False: "score"})
    builder.add_edge("failed", END)
    builder.add_conditional_edges("score", needs_revisit, ["revisit", "score", "rank"])
    builder.add_edge("revisit", "score")
    builder.add_edge("rank", END)
    return builder.compile(checkpointer=checkpointer, name="retrieval").with_config(recursion_limit=RECURSION_LIMIT)


graph = build_graph()
