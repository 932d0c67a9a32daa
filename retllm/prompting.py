"""Prompt files (``retllm.prompts``), parsed strictly and rendered with Jinja2 ``StrictUndefined``.

A prompt is a list of parts (images by role, and text templates). Untrusted text (queries, candidate
captions, options) only ever enters through :func:`delimit`, inside the template's ``<...>`` data
delimiters, so it cannot close them and read as instructions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Literal

import yaml
from jinja2 import Environment, StrictUndefined
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from retllm.errors import ConfigError

Role = Literal["query", "candidate"]
# C0 and C1 control characters except tab, line feed and next line (a line break, like line feed)
_CTRL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x84\x86-\x9f]")


class Part(BaseModel):
    """One message part: an image (by role) or a text template, optionally conditional."""

    model_config = ConfigDict(extra="forbid")
    image: Role | None = None
    text: str | None = None
    when: Literal["query_image", "candidate_image", "query_text", "candidate_text"] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Part:
        if (self.image is None) == (self.text is None):
            raise ValueError("a part is either an image or a text")
        return self


class Answer(BaseModel):
    """Answer tokens: a positive/negative pair (pointwise) or option labels (listwise)."""

    model_config = ConfigDict(extra="forbid")
    positive: str | None = None
    negative: str | None = None
    options: str | None = None


class PromptSpec(BaseModel):
    """A prompt file."""

    model_config = ConfigDict(extra="forbid")
    name: str
    query: str
    candidate: str
    answer: Answer
    parts: list[Part]

    @property
    def answer_words(self) -> tuple[str, str]:
        """The (positive, negative) answer words of a pointwise prompt: the one place they are defined."""
        if self.answer.positive is None or self.answer.negative is None:
            raise ConfigError(f"prompt {self.name!r} has no positive/negative answer (is it a listwise prompt?)")
        return self.answer.positive, self.answer.negative

    @property
    def option_labels(self) -> str:
        """The option labels of a listwise prompt, one character each."""
        if not self.answer.options:
            raise ConfigError(f"prompt {self.name!r} has no option labels (is it a pointwise prompt?)")
        return self.answer.options


@dataclass(frozen=True)
class Rendered:
    """A rendered prompt: ``("text", str)`` and ``("image", role)`` parts in message order."""

    parts: tuple[tuple[str, str], ...]

    @property
    def image_roles(self) -> list[str]:
        return [v for k, v in self.parts if k == "image"]

    @property
    def text(self) -> str:
        """The text parts joined (for snapshots and verbalised endpoints)."""
        return "\n".join(v if k == "text" else f"[{v} image]" for k, v in self.parts)


_env = Environment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False)


def delimit(text: str | None, *, one_line: bool = False) -> str | None:
    """Make untrusted text safe inside ``<...>``: angle brackets become ‹ ›, control characters spaces.

    Line breaks stay in queries and captions (the research code's prompt shows a multi-line caption as it is);
    ``one_line`` (a listwise prompt's options and query) turns every run of whitespace, line breaks included, into
    one space, so no text can start a line that reads as an option (``3. <...>``).
    """
    if text is None:
        return None
    out = _CTRL.sub(" ", text.replace("<", "‹").replace(">", "›")).strip()
    return " ".join(out.split()) if one_line else out


RENDER_PROBE = "<a>\x00\t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x7f\x80\x85\x9f\u2028\u2029  b "
"""Text with every character :func:`delimit` treats specially: every scoring prompt rendered with it in every
field is part of the eval score cache's key (:func:`retllm.eval.cache.prompts_hash`), so a change to how data
enters a prompt is a new key."""


@lru_cache(maxsize=32)
def load_prompt(name: str) -> PromptSpec:
    """Load ``prompts/<name>.yaml`` from the installed package."""
    path = resources.files("retllm.prompts") / f"{name}.yaml"
    if not path.is_file():
        names = sorted(
            p.name.removesuffix(".yaml")
            for p in resources.files("retllm.prompts").iterdir()
            if p.name.endswith(".yaml")
        )
        raise ConfigError(f"unknown prompt {name!r}; available: {', '.join(names)}")
    try:
        return PromptSpec.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    except (ValidationError, yaml.YAMLError) as e:
        raise ConfigError(f"prompt file {name}.yaml is invalid: {e}") from e


_BY_SHAPE = {
    ("text", "image"): "text_to_image",
    ("image", "text"): "image_to_text",
    ("text+image", "image"): "text_image_to_image",
    ("image", "image"): "image_to_image",
    ("text", "text"): "text_to_text",
}


def prompt_for(query_modality: str, candidate_modality: str) -> PromptSpec:
    """The prompt for a (query, candidate) modality pair; mixed combinations use the general layout."""
    return load_prompt(_BY_SHAPE.get((query_modality, candidate_modality), "image_text_to_image_text"))


def render(
    spec: PromptSpec,
    *,
    query_text: str | None,
    query_image: bool,
    candidate_text: str | None = None,
    candidate_image: bool = False,
    options: list[str] | None = None,
) -> Rendered:
    """Render ``spec`` for one pair; image parts appear only for images that exist."""
    present = {
        "query_image": query_image,
        "candidate_image": candidate_image,
        "query_text": bool(query_text),
        "candidate_text": bool(candidate_text),
    }
    ctx = {
        "query_text": delimit(query_text, one_line=bool(options)),  # listwise: no line can read as an option
        "candidate_text": delimit(candidate_text),
        "query_image": query_image,
        "candidate_image": candidate_image,
        "options": [delimit(o, one_line=True) for o in options or []],
    }
    parts: list[tuple[str, str]] = []
    for p in spec.parts:
        if p.when is not None and not present[p.when]:
            continue
        if p.image is not None:
            if present[f"{p.image}_image"]:
                parts.append(("image", p.image))
        else:
            assert p.text is not None
            parts.append(("text", _env.from_string(p.text).render(**ctx)))
    return Rendered(tuple(parts))
