"""Fine-stage scorers: a multimodal LLM judges each (query, candidate) pair."""

from retllm.scorers.base import Candidate, Score, Scorer

__all__ = ["Candidate", "Score", "Scorer"]
