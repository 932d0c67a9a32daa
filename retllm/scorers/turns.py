"""Step-wise pair scoring: the primitives that the library loop and the agent graph both drive.

A :class:`Turn` is one (query, candidate) pair being judged. A scorer opens a turn per pair
(:meth:`~retllm.scorers.base.Scorer.open_turns`), then steps every ready turn at once
(:meth:`~retllm.scorers.base.Scorer.step`): a local model runs one batched forward that always ends the
turn; an endpoint sends one request per turn, concurrently, and a turn may end that step waiting on
``revisit_image`` calls (:attr:`Turn.pending`). Each call is checked against the candidate
(:func:`check_revisit`) and answered (:meth:`Turn.answer`): the next step shows the model the view it asked
for. :meth:`~retllm.scorers.base.Scorer.finalize` gives the turn's :class:`~retllm.scorers.base.Score`.
``Scorer.score`` is that loop; the agent graph runs the same steps with the calls going through a ToolNode.

Turns hold image references (paths, URLs; bytes only where the caller handed bytes in), never decoded
images or data URLs: the transcript names a revisit view by its box, and the view is cut again when a
request needs it, so graph state and checkpoints stay small.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from retllm.errors import BadItemError, ScoringError
from retllm.images import ImageLimits
from retllm.scorers.base import Candidate, Score
from retllm.types import Query

REVISIT_TOOL = "revisit_image"
REVISIT_DESCRIPTION = (
    "Look at the candidate image again before answering, optionally zoomed into a region. Call this when "
    "a detail (small object, text, colour, count) decides whether the candidate matches. Returns the image."
)
BOX_DESCRIPTION = "Optional zoom region [x0, y0, x1, y1] as fractions (0-1) of the image's width and height."


def query_key(query: Query) -> tuple[str | None, str | None]:
    """A hashable identity for a query's content, so its image is read once per step however many turns hold it."""
    img = query.image
    ref = hashlib.sha256(img).hexdigest() if isinstance(img, bytes) else (None if img is None else str(img))
    return query.text, ref


class RevisitError(ScoringError):
    """A revisit request the model can fix: unknown candidate, malformed box, no image to revisit."""


class ToolCall(BaseModel):
    """A tool call the model made, as it wrote it (``arguments`` is the raw JSON text)."""

    id: str
    name: str
    arguments: str = "{}"

    def args(self) -> dict[str, Any]:
        """The arguments as a dict; :class:`RevisitError` when they are not a JSON object."""
        try:
            out = json.loads(self.arguments or "{}")
        except json.JSONDecodeError as e:
            raise RevisitError(f"the arguments are not valid JSON: {self.arguments[:200]!r}") from e
        if not isinstance(out, dict):
            raise RevisitError(f"the arguments must be a JSON object, got {self.arguments[:200]!r}")
        return out


class Turn(BaseModel):
    """One (query, candidate) pair being judged.

    Attributes:
        key: The pair's position among the candidates it was opened with.
        transcript: What followed the first prompt (endpoint scorers): the model's turns with tool calls, then
            one ``tool`` entry per call, holding the revisit's ``view`` box (``"all"``: the whole image) or
            its error. Requests are rebuilt from it; it holds no image bytes.
        pending: Revisit calls the model made that are not answered yet.
        revisits: Revisit views given so far (never above the scorer's bound).
        score: Set when the turn is finished.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    key: int
    query: Query
    candidate: Candidate
    transcript: list[dict[str, Any]] = Field(default_factory=list)
    pending: list[ToolCall] = Field(default_factory=list)
    revisits: int = 0
    steps: int = 0
    latency_s: float = 0.0
    score: Score | None = None

    @property
    def done(self) -> bool:
        return self.score is not None

    @property
    def ready(self) -> bool:
        """Neither finished nor waiting on a revisit: the next step advances it."""
        return self.score is None and not self.pending

    def finish(self, score: Score) -> None:
        score.revisits = self.revisits
        score.latency_s = self.latency_s
        self.score = score
        self.pending = []

    def call(self, call_id: str) -> ToolCall:
        for c in self.pending:
            if c.id == call_id:
                return c
        raise KeyError(f"no pending call {call_id!r} on the turn of candidate {self.candidate.id!r}")

    def answer(self, call_id: str, *, box: list[float] | str | None = None, error: str | None = None) -> None:
        """Answer one pending call: with a view (``box``, or ``"all"`` for the whole image) or an ``error``.

        An answered call with a view counts as a revisit; an error (the model can fix its arguments) does not
        show anything, but still costs the turn one of its steps.
        """
        call = self.call(call_id)
        self.pending.remove(call)  # only this call, should an id repeat
        entry: dict[str, Any] = {"role": "tool", "tool_call_id": call_id}
        if error is not None:
            entry["content"] = f"error: {error}"
            entry["error"] = error
        else:
            view = "all" if box is None else box
            self.revisits += 1
            where = "" if view == "all" else f", zoomed to {view}"
            entry["content"] = f"Candidate {self.candidate.id} image{where}: shown below."
            entry["view"] = view
        self.transcript.append(entry)


def check_revisit(candidate: Candidate, args: dict[str, Any], limits: ImageLimits | None = None) -> list[float] | None:
    """Check a ``revisit_image`` call against its pair's candidate; returns the zoom box (``None``: whole image).

    Raises:
        RevisitError: Unknown candidate id, a candidate without an image, a malformed or empty box, or an
            image that cannot be read: the model is told so and may try again.
    """
    from retllm.scorers.chat import crop_for_revisit

    cid = args.get("candidate_id")
    if cid is None:
        raise RevisitError("candidate_id is required")
    if str(cid) != candidate.id:
        raise RevisitError(f"unknown candidate id {cid!r}; this pair's candidate is {candidate.id!r}")
    if candidate.image is None:
        raise RevisitError(f"candidate {candidate.id!r} has no image to revisit")
    box = args.get("box")
    if box is not None:
        if not (
            isinstance(box, list)
            and len(box) == 4
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in box)
        ):
            raise RevisitError(f"box must be [x0, y0, x1, y1] with numbers between 0 and 1, got {box!r}")
        x0, y0, x1, y1 = (float(v) for v in box)
        if not all(0.0 <= v <= 1.0 for v in (x0, y0, x1, y1)):
            raise RevisitError(f"box values are fractions of the image size, between 0 and 1; got {box!r}")
        if x1 - x0 < 0.01 or y1 - y0 < 0.01:
            raise RevisitError(f"box {box!r} is empty: it needs x0 < x1 and y0 < y1")
        box = [x0, y0, x1, y1]
    lim = limits or ImageLimits()
    try:
        crop_for_revisit(lim.read(candidate.image), box, 64 * 64, lim)
    except (BadItemError, ScoringError, OSError) as e:
        raise RevisitError(f"candidate {candidate.id!r}: {e}") from e
    return box
