"""The LangGraph agent over :mod:`retllm.tools` (installed as ``retllm.agent``).

The graph (coarse search → MLLM scoring node → ranked scores with provenance) arrives with the
agent issue; this package exists now so the installed layout is fixed from the start.
"""
