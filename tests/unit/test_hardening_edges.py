"""Edges an outside mutation probe found untested (issue 18's second review): each test kills one mutant."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from retllm.errors import BadItemError


def test_a_host_that_only_ends_with_an_allowed_name_is_refused() -> None:
    from retllm.access import host_allowed

    names = frozenset({"example.com", "search.example:8443"})
    assert host_allowed("example.com:8080", names) and host_allowed("search.example:8443", names)
    for evil in (
        "evilexample.com",
        "evil.example.com",
        "example.com.evil",
        "search.example:8444",
        "xsearch.example:8443",
    ):
        assert not host_allowed(evil, names), evil


def test_a_failed_decode_gives_its_budget_back() -> None:
    from retllm.images import decode_budget, decode_image

    buf = io.BytesIO()
    Image.new("RGB", (600, 600), (1, 2, 3)).save(buf, "PNG", compress_level=0)
    cut = buf.getvalue()[: len(buf.getvalue()) // 2]  # header and half the pixels
    for _ in range(3):
        with pytest.raises(BadItemError, match="truncated or corrupt"):  # held its bytes, then failed
            decode_image(cut, budget_mb=13)
    assert decode_budget(13).used == 0 and decode_budget(13).waiting == 0
    assert decode_image(buf.getvalue(), budget_mb=13).size == (600, 600)


def test_a_full_budget_refuses_after_its_patience_instead_of_waiting_forever() -> None:
    from retllm.images import DecodeBudget

    budget = DecodeBudget(100, patience=0.05)
    with budget.hold(80, "a"), pytest.raises(BadItemError, match="stayed full for 0.05 s"):
        with budget.hold(30, "b"):
            pass
    assert budget.used == 0


def test_the_token_estimate_counts_scripts_and_digits_as_more_than_english() -> None:
    from retllm.scorers.base import estimated_cut

    assert estimated_cut("word " * 1000, 100) == ("word " * 1000)[:400]
    assert len(estimated_cut("写" * 1000, 100)) == 100  # one token or more per character
    assert len(estimated_cut("7" * 1000, 100)) == 200  # digits, base64: about two per token
    assert estimated_cut("short", 100) == "short"


def test_a_png_keeps_the_orientation_its_exif_chunk_gives() -> None:
    from retllm.images import decode_image

    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    Image.new("RGB", (40, 20), (9, 9, 9)).save(buf, "PNG", exif=exif.tobytes())
    assert decode_image(buf.getvalue()).size == (20, 40)
    assert decode_image(buf.getvalue(), min_side=8).size[1] > decode_image(buf.getvalue(), min_side=8).size[0]
