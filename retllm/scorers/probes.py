"""What an endpoint can do, found out once per scorer with a few one-token requests instead of assumed.

- Vision: a text-only server drops images without a word (llama.cpp's ``chatml`` renders list content
  as nothing), fails for an unrelated reason (a template concatenating a list to a string), or prints
  the content list as text, base64 and all (Llama-3 and Gemma templates). The same short prompt is sent
  alone and with two 64x64 images of very different encoded size (one solid, one noise): a vision
  encoder adds the same number of tokens for both, a template printing them as text does not, and a
  server that drops them adds none. Anything but a vision encoder fails the search with one clear line.
- Tools: most GGUF chat templates ignore ``tools`` silently, so offering ``revisit_image`` would cost
  tokens for nothing. The same prompt with the tool shows whether the template renders it (the prompt
  grows by the tool's schema); revisits stay on only if it does (``revisit="on"`` skips the probe). A
  forced ``tool_choice`` would prove nothing: llama.cpp grammar-forces a call the model never saw.

Probe requests are not retried; a transient failure leaves the answer open for a later pair, and after
three such failures the scorer goes on with images assumed to work and tools off. ``probe=False``
(``RETLLM_OPENAI_PROBE=off``, for a gateway whose usage counts mislead) sends none and assumes the same.
"""

from __future__ import annotations

import base64
import io
import logging
import random
import threading
from typing import TYPE_CHECKING, Any

from PIL import Image

from retllm.errors import EndpointError, ScoringError
from retllm.scorers.endpoint import Stopped

log = logging.getLogger(__name__)

PROBE_TEXT = "Capability check from the retllm scorer. Answer with one word: True or False."
MAX_INCONCLUSIVE = 3
PROBE_OFF = "a gateway that reports token usage its own way misleads this check: RETLLM_OPENAI_PROBE=off skips it"


def _png_url(im: Image.Image) -> str:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def probe_images() -> tuple[str, str]:
    """Two 64x64 PNG data URLs: one solid (tiny when encoded), one noise (about 100x larger)."""
    solid = Image.new("RGB", (64, 64), (90, 140, 200))
    rng = random.Random(0)
    noise = Image.frombytes("RGB", (64, 64), bytes(rng.randrange(256) for _ in range(64 * 64 * 3)))
    return _png_url(solid), _png_url(noise)


def _prompt_tokens(resp: Any) -> int | None:
    n = getattr(getattr(resp, "usage", None), "prompt_tokens", None)
    return n if isinstance(n, int) else None


class EndpointProbes:
    """Mixin for :class:`~retllm.scorers.openai.OpenAIScorer`: ``_check_vision`` and ``_check_tools``."""

    model: str
    endpoint: str
    probe: bool
    _tools_state: bool | None
    _vision_state: bool | None
    _probe_lock: threading.Lock
    _plain_tokens: int | None = None
    _inconclusive: int = 0

    if TYPE_CHECKING:  # provided by the scorer

        def _ask(
            self,
            messages: list[dict[str, Any]],
            tools: Any,
            stop: threading.Event | None = None,
            *,
            retries: int | None = None,
        ) -> Any: ...

    def _hold_probe_lock(self, stop: threading.Event | None) -> None:
        while not self._probe_lock.acquire(timeout=0.05):
            if stop is not None and stop.is_set():
                raise Stopped("the query already failed")

    def _probe(self, content: Any, tools: Any, stop: threading.Event | None) -> int | None:
        """Prompt tokens of one probe request (not retried)."""
        return _prompt_tokens(self._ask([{"role": "user", "content": content}], tools, stop, retries=0))

    def _plain(self, stop: threading.Event | None) -> int | None:
        if self._plain_tokens is None:
            self._plain_tokens = self._probe(PROBE_TEXT, None, stop)
        return self._plain_tokens

    def _give_up_after(self, what: str, e: Exception) -> bool:
        """Count an inconclusive probe; True when it is time to stop asking."""
        self._inconclusive += 1
        log.info("%s probe inconclusive (%s), %d of %d", what, e, self._inconclusive, MAX_INCONCLUSIVE)
        return self._inconclusive >= MAX_INCONCLUSIVE

    def _check_vision(self, stop: threading.Event | None) -> None:
        """Raise :class:`EndpointError` unless the endpoint reads images as images (asked once per scorer)."""
        if self._vision_state is not None or not self.probe:
            return
        self._hold_probe_lock(stop)
        try:
            if self._vision_state is not None:
                return
            fix = f"is {self.model!r} a vision model? Serve one (llama.cpp: a multimodal projector and chat handler)"
            try:
                plain = self._plain(stop)  # a wrong key or model fails here, with its own message
            except (EndpointError, ScoringError, Stopped):
                raise
            except Exception as e:  # transient
                if self._give_up_after("vision", e):
                    self._vision_state = True
                return
            solid, noise = probe_images()
            try:
                counts = [
                    self._probe(
                        [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": PROBE_TEXT}],
                        None,
                        stop,
                    )
                    for url in (solid, noise)
                ]
            except (EndpointError, ScoringError) as e:
                raise EndpointError(f"{self.endpoint} refused a request with an image ({e}); {fix}") from e
            except Stopped:
                raise
            except Exception as e:  # transient
                if self._give_up_after("vision", e):
                    self._vision_state = True
                return
            if plain is not None and all(n is not None for n in counts):
                a, b = counts
                assert a is not None and b is not None
                if a <= plain and b <= plain:
                    raise EndpointError(
                        f"{self.endpoint} ignored an image ({a} prompt tokens with it, {plain} without); {fix}; "
                        + PROBE_OFF
                    )
                if a != b:
                    raise EndpointError(
                        f"{self.endpoint} reads images as text (two images of one size cost {a} and {b} prompt tokens: "
                        f"its chat template prints them); {fix}; {PROBE_OFF}"
                    )
            self._vision_state = True
        finally:
            self._probe_lock.release()

    def _check_tools(self, tool: dict[str, Any], stop: threading.Event | None) -> bool:
        """Whether to offer the revisit tool: ``on``/``off`` as set; ``auto`` asks once whether the chat
        template shows the tool to the model at all (the prompt grows by the tool's schema when it does)."""
        if self._tools_state is not None:
            return self._tools_state
        self._hold_probe_lock(stop)
        try:
            if self._tools_state is not None:
                return self._tools_state
            try:
                plain = self._plain(stop)
                offered = self._probe(PROBE_TEXT, [tool], stop)
            except (EndpointError, Stopped):
                raise
            except Exception as e:  # a transient fault: decide on a later pair
                if self._give_up_after("tools", e):
                    self._tools_state = False
                return False
            if self._tools_state is False:  # _ask saw the tools refused (a 400 names them)
                return False
            if plain is None or offered is None:
                log.warning(
                    "endpoint reports no token usage: cannot tell whether it shows tools; revisits off "
                    "(RETLLM_REVISIT=on offers them anyway)"
                )
                self._tools_state = False
            elif offered <= plain:
                log.warning("endpoint ignores tools (its chat template does not show them); revisits off")
                self._tools_state = False
            else:
                self._tools_state = True
            return self._tools_state
        finally:
            self._probe_lock.release()
