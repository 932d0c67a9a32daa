"""OpenAIScorer wall time for k pairs against the local OpenAI-compatible server with a fixed delay per request,
vs. one request's time (what a sequential loop would pay k times).

    .venv/bin/python bench/openai_latency.py --k 20 --delay 0.2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import openai

sys.path.append(str(Path(__file__).resolve().parent.parent))

from retllm.scorers.base import Candidate  # noqa: E402
from retllm.scorers.openai import OpenAIScorer  # noqa: E402
from retllm.types import Query  # noqa: E402
from tests.fakes.openai_server import Switches, fake_openai  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--delay", type=float, default=0.2)
    ap.add_argument("--concurrency", type=int, default=16)
    args = ap.parse_args()
    cands = [Candidate(f"t{i}", text=f"candidate caption number {i}") for i in range(args.k)]
    with fake_openai(Switches(delay=args.delay)) as fake:
        client = openai.OpenAI(base_url=fake.url, api_key="bench", timeout=30)
        sc = OpenAIScorer(client, "fake-vlm", concurrency=args.concurrency, revisit="off")
        sc.score(Query(text="warm-up"), cands[:1])
        t = time.perf_counter()
        sc.score(Query(text="q"), cands[:1])
        one = time.perf_counter() - t
        t = time.perf_counter()
        out = sc.score(Query(text="q"), cands)
        many = time.perf_counter() - t
        assert all(s.method == "logprobs" for s in out)
    print(f"one request: {one * 1000:.0f} ms; k={args.k} pairs at concurrency {args.concurrency}: {many * 1000:.0f} ms")
    print(f"k={args.k} / one request = {many / one:.2f}x (target <= 3x); a sequential loop would be ~{args.k}x")


if __name__ == "__main__":
    main()
