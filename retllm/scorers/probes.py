"""What an endpoint can do, found out once per scorer with a few tiny requests instead of assumed.

- Vision: a text-only server drops images without a word (llama.cpp's ``chatml`` renders list content
  as nothing) or fails for an unrelated reason (a template concatenating a list to a string). Sending
  the same short prompt with and without a small image and comparing ``usage.prompt_tokens`` tells;
  a server that ignores or refuses the image fails the search with one clear line.
- Tools: most GGUF chat templates ignore ``tools`` silently, so offering ``revisit_image`` would cost
  tokens for nothing. The same short prompt with and without the tool shows whether the template renders
  it (the prompt grows by the tool's schema); revisits stay on only if it does (``revisit="on"`` skips the
  probe). A forced ``tool_choice`` proves nothing: llama.cpp grammar-forces a call the model never saw.
"""

from __future__ import annotations

import base64
import io
import logging
import threading
from typing import TYPE_CHECKING, Any

from PIL import Image

from retllm.errors import EndpointError, ScoringError
from retllm.scorers.endpoint import Stopped

log = logging.getLogger(__name__)

PROBE_TEXT = "Capability check from the retllm scorer. Answer with one word: True or False."


def probe_image_url() -> str:
    """A small, busy PNG (64x64) as a data URL: any vision encoder turns it into several tokens."""
    im = Image.new("RGB", (64, 64))
    im.putdata([((x * 37) % 256, (y * 91) % 256, ((x + y) * 53) % 256) for y in range(64) for x in range(64)])
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


class EndpointProbes:
    """Mixin for :class:`~retllm.scorers.openai.OpenAIScorer`: ``_check_vision`` and ``_check_tools``."""

    model: str
    endpoint: str
    revisit: str
    probe: bool
    _tools_state: bool | None
    _vision_state: bool | None
    _probe_lock: threading.Lock

    if TYPE_CHECKING:  # provided by the scorer

        def _ask(self, messages: list[dict[str, Any]], tools: Any, stop: threading.Event | None = None) -> Any: ...

        def _create(self, stop: threading.Event | None = None, **kwargs: Any) -> Any: ...

    def _check_vision(self, stop: threading.Event | None) -> None:
        """Raise :class:`EndpointError` when the endpoint refuses or ignores images (once per scorer)."""
        if self._vision_state is not None or not self.probe:
            return
        with self._probe_lock:
            if self._vision_state is not None:
                return
            fix = f"is {self.model!r} a vision model? Serve one (llama.cpp: a multimodal projector and chat handler)"
            try:
                plain = self._ask([{"role": "user", "content": PROBE_TEXT}], None, stop)
                parts = [
                    {"type": "image_url", "image_url": {"url": probe_image_url()}},
                    {"type": "text", "text": PROBE_TEXT},
                ]
                seen = self._ask([{"role": "user", "content": parts}], None, stop)
            except (EndpointError, ScoringError) as e:
                raise EndpointError(f"{self.endpoint} refused a request with an image ({e}); {fix}") from e
            except Stopped:
                raise
            except Exception as e:  # a transient fault: decide on a later pair
                log.info("vision probe inconclusive (%s); trying again with the next image pair", e)
                return
            before = getattr(getattr(plain, "usage", None), "prompt_tokens", None)
            after = getattr(getattr(seen, "usage", None), "prompt_tokens", None)
            if isinstance(before, int) and isinstance(after, int) and after <= before:
                raise EndpointError(
                    f"{self.endpoint} ignored an image ({after} prompt tokens with it, {before} without); {fix}"
                )
            self._vision_state = True

    def _check_tools(self, tool: dict[str, Any], stop: threading.Event | None) -> bool:
        """Whether to offer the revisit tool: ``on``/``off`` as set; ``auto`` asks once whether the chat
        template shows the tool to the model at all (the prompt grows by the tool's schema when it does)."""
        if self._tools_state is not None:
            return self._tools_state
        with self._probe_lock:
            if self._tools_state is not None:
                return self._tools_state
            messages = [{"role": "user", "content": PROBE_TEXT}]
            try:
                plain = self._ask(messages, None, stop)
                offered = self._ask(messages, [tool], stop)
            except Stopped:
                raise
            except Exception as e:  # refused tools (a 400 turns them off inside _ask) or a transient fault
                log.info("tool probe inconclusive (%s); revisits off", e)
                self._tools_state = False
                return False
            before = getattr(getattr(plain, "usage", None), "prompt_tokens", None)
            after = getattr(getattr(offered, "usage", None), "prompt_tokens", None)
            if self._tools_state is False:  # _ask saw the tools refused
                return False
            if not (isinstance(before, int) and isinstance(after, int)):
                log.warning(
                    "endpoint reports no token usage: cannot tell whether it shows tools; revisits off "
                    "(RETLLM_REVISIT=on offers them anyway)"
                )
                self._tools_state = False
            elif after <= before:
                log.warning("endpoint ignores tools (its chat template does not show them); revisits off")
                self._tools_state = False
            else:
                self._tools_state = True
            return self._tools_state
