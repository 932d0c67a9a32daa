"""Prompt files (package data), loaded by name (installed as ``retllm.prompts``)."""
