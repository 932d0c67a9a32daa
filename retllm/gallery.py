"""Self-contained HTML galleries of ranked hits (thumbnails inlined), for results better seen than read."""

from __future__ import annotations

import base64
import html
import io
import logging
from collections.abc import Sequence
from pathlib import Path

from retllm.errors import BadItemError
from retllm.images import load_image
from retllm.types import Hit

log = logging.getLogger(__name__)

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5rem;background:#fafafa;color:#222}
h1{font-size:1.3rem}h2{font-size:1.05rem;margin-top:1.5rem}
.row{display:flex;flex-wrap:wrap;gap:.75rem}
figure{margin:0;width:180px;background:#fff;border:1px solid #ddd;border-radius:6px;padding:.4rem}
figure img{width:100%;height:160px;object-fit:contain;background:#eee}
figcaption{font-size:.78rem;line-height:1.3}
.rank{font-weight:600}.up{color:#1a7f37}.down{color:#b42318}.err{color:#b42318}
"""


def _thumb(src: str | None, size: int = 320) -> str | None:
    if not src:
        return None
    try:
        im = load_image(src, fit_side=size)  # decoded reduced towards the thumbnail
    except BadItemError as e:
        log.warning("no thumbnail for %s: %s", src, e)
        return None
    im.thumbnail((size, size))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _figure(h: Hit) -> str:
    img = _thumb(h.image)
    lines = [f'<span class="rank">#{h.rank}</span> {html.escape(h.id[:12])}', f"coarse {h.coarse_score:.4f}"]
    if h.score is not None:
        move = ""
        if h.coarse_rank is not None and h.coarse_rank != h.rank:
            cls = "up" if h.coarse_rank > h.rank else "down"
            move = f' <span class="{cls}">(was #{h.coarse_rank})</span>'
        lines.append(f"score {h.score:.4f} · {html.escape(h.method or '')}{move}")
        if h.retraced is not None or h.revisits:
            lines.append(f"retraced L{h.retraced}" if h.retraced is not None else f"revisits {h.revisits}")
    if h.error:
        lines.append(f'<span class="err">{html.escape(h.error[:120])}</span>')
    if h.text:
        lines.append(html.escape(h.text[:200]))
    tag = f'<img src="{img}" alt="{html.escape(h.id)}">' if img else ""
    return f"<figure>{tag}<figcaption>{'<br>'.join(lines)}</figcaption></figure>"


def write_gallery(path: Path, sections: Sequence[tuple[str, Sequence[Hit]]], *, title: str = "retllm results") -> Path:
    """Write one HTML page with a row of hits per section (e.g. coarse order, then re-ranked order)."""
    body = "".join(
        f"<h2>{html.escape(name)}</h2><div class='row'>{''.join(_figure(h) for h in hits)}</div>"
        for name, hits in sections
    )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
