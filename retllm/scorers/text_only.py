"""Text-only causal LMs behind the same interface as a multimodal processor, for :class:`HFScorer`.

A text collection needs no vision model, and a GGUF served by llama.cpp is often a text model: loading
the same weights locally lets served scores be checked against local ones.
"""

from __future__ import annotations

from typing import Any


class TextOnlyProcessor:
    """A tokenizer dressed as a processor: ``__call__(text=..., images=None)`` and ``apply_chat_template``."""

    image_processor = None

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def __call__(self, *, text: list[str], images: Any = None, **kwargs: Any) -> Any:
        if images:
            raise ValueError("a text-only model was given images")
        kwargs = {k: v for k, v in kwargs.items() if k in ("padding", "return_tensors")}
        return self.tokenizer(text, add_special_tokens=False, **kwargs)

    def apply_chat_template(self, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
        """Text parts joined into one string per message: chat templates of text models expect strings."""
        flat = []
        for m in messages:
            content = m["content"]
            if isinstance(content, list):
                content = "".join(p["text"] for p in content if p.get("type") == "text")
            flat.append({**m, "content": content})
        return self.tokenizer.apply_chat_template(flat, **kwargs)


def load_text_only(path: str, dtype: Any) -> tuple[Any, TextOnlyProcessor]:
    """``AutoModelForCausalLM`` and its tokenizer from a local folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:  # Llama and Mistral ship none; padding is on the left and masked out
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    return model, TextOnlyProcessor(tok)
