"""LLM-callable tools: thin typed adapters over :mod:`retllm` (installed as ``retllm.tools``).

- :mod:`tools.ops`: the operations (search, coarse search, add, delete, list), shared by every front end;
- :mod:`tools.langchain_tools`: LangChain tools (``build_tools(deps)`` for other agents);
- :mod:`tools.mcp_server`: the MCP server (``retllm mcp``).
"""
