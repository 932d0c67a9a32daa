"""The path rule on what the review found: paths with spaces leaked past the first space, and the caller's own
stored text and payload came back rewritten."""

from __future__ import annotations

from retllm.redact import redact, redact_data


def test_a_path_with_spaces_that_ends_a_message_is_cut_whole() -> None:
    assert redact("file not found: /srv/space dir/My Photos/secret name 0.png") == "file not found: …/secret name 0.png"
    assert redact("outside the allowed folders (RETLLM_FILE_ROOTS): /r/a b/c d.png") == (
        "outside the allowed folders (RETLLM_FILE_ROOTS): …/c d.png"
    )
    assert redact("cannot read /a/b/c.png: Is a directory") == "cannot read …/c.png: Is a directory"


def test_the_callers_own_data_comes_back_as_stored() -> None:
    hit = {
        "id": "/docs/2024/report",
        "coarse_score": 0.5,
        "text": "see /usr/share/doc/readme for details",
        "payload": {"path": "/docs/2024/report.pdf"},
        "image": "/srv/my data/blobs/ab12",
        "error": "file not found: /srv/my data/x y.png",
    }
    out = redact_data({"query": "files under /docs/2024", "scorer": "hf:/models/my judge", "hits": [hit]})
    assert out["query"] == "files under /docs/2024" and out["scorer"] == "hf:…/my judge"
    (h,) = out["hits"]
    assert (h["id"], h["text"], h["payload"]) == (hit["id"], hit["text"], hit["payload"])
    assert h["image"] == "…/ab12" and h["error"] == "file not found: …/x y.png"


def test_ids_come_back_usable_wherever_they_appear() -> None:
    added = {"collection": "c", "added": 1, "ids": ["/photos/2024/img1.jpg"], "skipped": []}
    assert redact_data(added) == added
    deleted = {"collection": "c", "deleted": 0, "missing": ["/photos/x.jpg"]}
    assert redact_data(deleted) == deleted
    event = {"event": "candidate", "id": "/photos/2024/img1.jpg", "error": "file not found: /srv/a b/c.png"}
    assert redact_data(event) == {**event, "error": "file not found: …/c.png"}
