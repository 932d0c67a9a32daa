"""The LangGraph agent over :mod:`retllm.tools` (installed as ``retllm.agent``).

- :mod:`retllm.agent.graph`: the retrieval graph (coarse search -> MLLM scoring <-> revisit -> ranked hits);
- :mod:`retllm.agent.chat`: the conversational graph (a chat model calling ``multimodal_search``);
- :mod:`retllm.agent.context` / :mod:`retllm.agent.state`: dependencies and state.
"""
