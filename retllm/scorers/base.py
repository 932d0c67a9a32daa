"""The scorer role: ``score(query, candidates) -> list[Score]``, one score per candidate, in order."""

from __future__ import annotations

import logging
import math
import random
import threading
from abc import ABC
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from PIL import Image

from retllm.errors import Cancelled, ConfigError, ScoringError
from retllm.images import ImageLimits
from retllm.types import ImageSource, Query

if TYPE_CHECKING:
    from retllm.events import EventSink
    from retllm.scorers.turns import ToolCall, Turn

log = logging.getLogger(__name__)

DEFAULT_MAX_QUERY_TOKENS = 512
"""Most query tokens the MLLM sees (RETLLM_MAX_QUERY_TOKENS). A query describes what to find: retrieval captions
run 10-30 tokens and MMEB's instruction plus query under 100; 512 is about a request's 2,000 characters of
English, so the bound only cuts text that would cost a pair several times its image tokens."""


def _box_arg(call: ToolCall) -> object:
    try:
        return call.args().get("box")
    except ScoringError:
        return None


@dataclass(frozen=True)
class Candidate:
    """A coarse hit as the fine stage sees it."""

    id: str
    text: str | None = None
    image: ImageSource | None = None
    coarse_score: float = 0.0

    @property
    def modality(self) -> str:
        if self.text and self.image is not None:
            return "text+image"
        return "image" if self.image is not None else "text"


@dataclass
class Score:
    """One pair's fine-stage result and how it was obtained.

    Attributes:
        value: The ranking score: two-way normalised P(True) = sigmoid(logit_True - logit_False) for
            ``logits``/``logprobs``; 1.0 or 0.0 for a ``verbalized`` answer; ``None`` when the pair fell back
            (``coarse``: it is not a probability, so none is claimed). See :mod:`retllm.ranking` for the order.
        p_true: Raw P(True) under the full-vocabulary softmax (None where the backend cannot know it).
        entropy: Shannon entropy (nats) of the answer-position distribution, for tie-breaks.
        method: ``logits``, ``logprobs``, ``verbalized`` or ``coarse`` (could not be scored; ranks after
            every scored pair, by its coarse score).
        retraced: Decoder layer where visual retracing injected, or None if it did not fire.
        revisits: Number of revisit-image tool calls the model made.
        latency_s: Wall time attributed to this pair (a batch's time is shared evenly).
        error: Why the pair fell back, when it did.
    """

    value: float | None
    p_true: float | None = None
    entropy: float | None = None
    method: str = "logits"
    retraced: int | None = None
    revisits: int = 0
    latency_s: float = 0.0
    error: str | None = None

    @classmethod
    def fallback(cls, error: str, latency_s: float = 0.0) -> Score:
        """A pair the scorer could not judge: no fine score, the reason recorded."""
        return cls(value=None, method="coarse", error=error, latency_s=latency_s)

    @property
    def failed(self) -> bool:
        return self.method == "coarse"


def two_way(logit_true: float, logit_false: float) -> float:
    """P(True) / (P(True) + P(False)) from the two logits, computed stably."""
    d = logit_true - logit_false
    return 1.0 / (1.0 + math.exp(-d)) if d >= 0 else math.exp(d) / (1.0 + math.exp(d))


@dataclass
class Choice:
    """A listwise answer: which option the model picked, read from option-token probabilities.

    Attributes:
        index: The chosen option, as an index into the caller's option list.
        probs: Probability of each option (caller's order), normalised over the option labels.
        order: The (first) presentation order used (``order[j]`` is the caller index shown at position ``j``).
        method: ``logits``, ``logprobs`` or ``verbalized`` (joined with ``+`` if rounds differed).
        orders: Every round's presentation order.
    """

    index: int
    probs: list[float]
    order: list[int]
    method: str
    orders: list[list[int]] = field(default_factory=list)


MAX_OPTIONS = 10


def check_not_all_failed(scores: Sequence[Score]) -> None:
    """Raise :class:`ScoringError` when every pair of a query fell back: the query failed, not its pairs."""
    if scores and all(s.failed for s in scores):
        raise ScoringError(
            f"the fine stage failed for all {len(scores)} pair(s) of the query; first error: {scores[0].error}"
        )


class Scorer(ABC):  # noqa: B024 - step() or score(): either one makes a backend
    """Judges (query, candidate) pairs with a multimodal LLM.

    Scorers are shared: one instance may be called from many threads at once, and each call's scores are
    the ones a call alone would get.
    """

    id: str = "scorer"
    limits: ImageLimits = ImageLimits()
    max_revisits: int = 0
    max_query_tokens: int | None = DEFAULT_MAX_QUERY_TOKENS

    def score(
        self,
        query: Query,
        candidates: Sequence[Candidate],
        *,
        on_event: EventSink | None = None,
        cancel: threading.Event | None = None,
    ) -> list[Score]:
        """One :class:`Score` per candidate, in the candidates' order: the step loop of :mod:`retllm.scorers.turns`.

        A pair that cannot be judged (unreadable image, transient endpoint fault) falls back
        (:meth:`Score.fallback`) and the others are scored; a configuration problem (wrong key, unknown
        model) raises. Callers that re-rank use :func:`check_not_all_failed`. ``on_event`` receives the
        ``candidate`` and ``revisit`` events of :mod:`retllm.events` as they happen. Once ``cancel`` is set, no
        more model work starts for this call and it raises :class:`~retllm.errors.Cancelled`.
        """
        from retllm import events

        emit = on_event or (lambda _e: None)
        turns = self.open_turns(query, candidates)
        for _ in range(self.max_revisits + 2):  # a step ends a turn or asks for revisits, up to the bound
            if all(t.done for t in turns):
                break
            Cancelled.check(cancel)
            was = [t.done for t in turns]
            self.step(turns, cancel=cancel)
            for event in events.scored(turns, was):
                emit(event)
            for t in turns:
                for call in list(t.pending):
                    emit(events.revisit(t, call, "requested", box=_box_arg(call)))
                    self.apply_revisit(t, call)
                    last = t.transcript[-1]
                    status = "done" if "view" in last else "error"
                    emit(events.revisit(t, call, status, box=last.get("view"), error=last.get("error")))
        return [self.finalize(t) for t in turns]

    # --- step-wise scoring (retllm.scorers.turns) -------------------------------------------------

    def open_turns(self, query: Query, candidates: Sequence[Candidate]) -> list[Turn]:
        """One :class:`~retllm.scorers.turns.Turn` per candidate; a query this scorer cannot judge at all raises."""
        from retllm.scorers.turns import Turn

        self.check_query(query, candidates)
        query = self.bounded(query)
        return [Turn(key=i, query=query, candidate=c) for i, c in enumerate(candidates)]

    def bounded(self, query: Query) -> Query:
        """``query`` with its text cut to :attr:`max_query_tokens` (RETLLM_MAX_QUERY_TOKENS), logged when it is:
        the one place the bound is applied, for every pair and every listwise call of every scorer."""
        n = self.max_query_tokens
        if n is None or not query.text:
            return query
        cut = self.cut_text(query.text, n)
        if cut == query.text:
            return query
        log.warning(
            "query text cut to %d tokens (RETLLM_MAX_QUERY_TOKENS): %d of its %d characters kept",
            n,
            len(cut),
            len(query.text),
        )
        return query.model_copy(update={"text": cut})

    def cut_text(self, text: str, max_tokens: int) -> str:
        """``text`` cut to at most ``max_tokens`` tokens of this scorer's model: here by :func:`estimated_cut`
        (hosted models' tokenizers are not at hand); local backends count with their tokenizer."""
        return estimated_cut(text, max_tokens)

    def check_query(self, query: Query, candidates: Sequence[Candidate]) -> None:  # noqa: B027 - optional hook
        """Raise :class:`ConfigError` when no pair of this query can be judged (a text-only model, images)."""

    def step(self, turns: Sequence[Turn], *, cancel: threading.Event | None = None) -> None:
        """Advance every ready turn (neither done nor waiting on a revisit) by one model call, in place.

        Every stepped turn either finishes (``turn.score`` set: scored or fallen back) or waits on revisit calls
        (``turn.pending``); a turn never waits past :attr:`max_revisits` revisits. A configuration problem
        raises, as :meth:`score` does; once ``cancel`` is set, :class:`~retllm.errors.Cancelled` (no more model
        calls start).

        Backends implement this (ours do). A scorer written against the older API that overrides only
        :meth:`score` still works: its turns are scored per query with one :meth:`score` call each.
        """
        if type(self).score is Scorer.score:
            raise NotImplementedError(f"{type(self).__name__} implements neither step() nor score()")
        from retllm.scorers.turns import query_key

        groups: dict[object, list[Turn]] = {}
        for t in turns:
            if t.ready:
                groups.setdefault((id(t.query), query_key(t.query)), []).append(t)
        for group in groups.values():
            Cancelled.check(cancel)
            scores = self.score(group[0].query, [t.candidate for t in group])
            for t, sc in zip(group, scores, strict=True):
                t.steps += 1
                t.finish(sc)

    def apply_revisit(self, turn: Turn, call: ToolCall) -> None:
        """Answer one pending call of ``turn`` the way the ``revisit_image`` tool does: checked, then a view."""
        from retllm.scorers.turns import REVISIT_TOOL, RevisitError, check_revisit

        try:
            if call.name != REVISIT_TOOL:
                raise RevisitError(f"unknown tool {call.name!r}; the only tool is {REVISIT_TOOL}")
            box = check_revisit(turn.candidate, call.args(), self.limits)
        except RevisitError as e:
            turn.answer(call.id, error=str(e))
            return
        turn.answer(call.id, box=box)

    def finalize(self, turn: Turn) -> Score:
        """The turn's score (a turn left unfinished falls back)."""
        if turn.score is None:
            return Score.fallback("the pair was not scored to the end", turn.latency_s)
        return turn.score

    def choose(self, query: Query, options: Sequence[str], *, seed: int | None = 0, rounds: int = 1) -> Choice:
        """Listwise choice over 2-10 text options.

        Args:
            seed: The option order is shuffled with it (``None`` keeps the given order), so that position
                bias averages out across queries.
            rounds: Calls per question, averaging the option probabilities. Round ``r`` shows the seeded
                order cyclically shifted by ``r`` positions, so ``rounds == len(options)`` puts every option
                in every slot exactly once and cancels a preference for a slot within the query itself
                (2 rounds for a two-choice task such as SugarCrepe).
        """
        n = len(options)
        if not 2 <= n <= MAX_OPTIONS:
            raise ConfigError(f"listwise mode takes 2 to {MAX_OPTIONS} options, got {n}")
        query = self.bounded(query)
        if not 1 <= rounds <= n:
            raise ConfigError(f"rounds must be between 1 and the number of options ({n}), got {rounds}")
        base = list(range(n))
        if seed is not None:
            random.Random(seed).shuffle(base)
        probs = [0.0] * n
        orders, methods = [], []
        for r in range(rounds):
            order = base[r:] + base[:r]
            logps, method = self._option_logprobs(query, [options[i] for i in order])
            m = max(logps)
            shown = [math.exp(lp - m) for lp in logps]
            z = sum(shown)
            for pos, i in enumerate(order):
                probs[i] += shown[pos] / z / rounds
            orders.append(order)
            methods.append(method)
        return Choice(
            index=max(range(n), key=probs.__getitem__),
            probs=probs,
            order=orders[0],
            method="+".join(sorted(set(methods))),  # one method, or e.g. "logprobs+verbalized"
            orders=orders,
        )

    def _option_logprobs(self, query: Query, shown: list[str]) -> tuple[list[float], str]:
        """Log-probabilities of the option labels ``0..n-1`` at the answer position."""
        raise ConfigError(f"{type(self).__name__} has no listwise mode")

    @property
    def prefers_urls(self) -> bool:
        """Whether http(s) images are best passed on as URLs (the scorer's endpoint fetches them itself)."""
        return False

    def load(
        self,
        src: ImageSource,
        *,
        min_side: int | None = None,
        fit_side: int | None = None,
        min_pixels: int | None = None,
    ) -> Image.Image:
        """Load an image for scoring (RGB), within :attr:`limits`, reduced as far as the sizes the model needs
        allow (see :func:`retllm.images.decode_image`)."""
        return self.limits.load(src, min_side=min_side, fit_side=fit_side, min_pixels=min_pixels)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and models."""


def estimated_cut(text: str, max_tokens: int) -> str:
    """``text`` cut where an estimate without a tokenizer reaches ``max_tokens``: an ASCII letter or space
    counts a quarter token (OpenAI's rule of thumb for English words), other ASCII (digits, punctuation,
    base64) half a token, any other character a whole one (CJK and most other scripts take one or more
    tokens per character), so the estimate rarely undercounts."""
    if len(text) <= max_tokens:  # fits even at one token per character
        return text
    budget, used = 4 * max_tokens, 0
    for i, ch in enumerate(text):
        used += 4 if ch >= "\x80" else 1 if ch.isalpha() or ch == " " else 2
        if used > budget:
            return text[:i]
    return text


def position_bias(scorer: Scorer, query: Query, options: Sequence[str], *, trials: int = 8) -> dict[str, object]:
    """Ask the same question under ``trials`` shuffled orders.

    Returns:
        ``consistency``: share of trials that picked the most-picked option (1.0 = order-independent);
        ``positions``: how often each presentation position was picked (a position-biased model piles up
        on one position whatever the options are); ``choices``: the option picked per trial.
    """
    choices, positions = [], [0] * len(options)
    for seed in range(trials):
        c = scorer.choose(query, options, seed=seed)
        choices.append(c.index)
        positions[c.order.index(c.index)] += 1
    modal = max(set(choices), key=choices.count)
    return {"consistency": choices.count(modal) / trials, "positions": positions, "choices": choices}
