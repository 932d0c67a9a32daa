"""The evaluation harness: dataset loaders (:mod:`retllm.eval.datasets`) and retrieval metrics
(:mod:`retllm.eval.metrics`), following the protocol of METHOD.md §4."""

from __future__ import annotations

from retllm.eval.datasets import DATASETS, EvalSet, load
from retllm.eval.metrics import accuracy, mean_recall, precision_at_1, recall_at_k

__all__ = ["DATASETS", "EvalSet", "accuracy", "load", "mean_recall", "precision_at_1", "recall_at_k"]
