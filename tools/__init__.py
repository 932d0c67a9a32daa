"""LLM-callable tools: thin typed adapters over :mod:`retllm` (installed as ``retllm.tools``).

The coarse-search, scoring and revisit-image tools arrive with the agent issue; this package exists
now so the installed layout (``retllm.tools``) is fixed from the start.
"""
