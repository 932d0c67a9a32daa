from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retllm.images import ImageLimits
from retllm.index.edge import EdgeIndex
from retllm.ingest import Ingestor, iter_sources
from retllm.types import Item, content_id
from tests.data_gen import png_bytes, solid, write_bad_files, write_good_images, write_odd_modes
from tests.fakes.http_files import serve_folder


@pytest.fixture
def index(tmp_path: Path):
    idx = EdgeIndex(tmp_path / "edge")
    yield idx
    idx.close()


def make(embedder, index, tmp_path: Path, **kw) -> Ingestor:
    return Ingestor(embedder, index, "c", blob_dir=tmp_path / "blobs", **kw)


def test_folder_with_bad_items_stores_the_rest_and_reports_each(embedder, index, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    good = write_good_images(folder / "good", n=5)
    odd = write_odd_modes(folder / "odd")
    bad = write_bad_files(folder / "bad")
    (folder / "note.txt").write_text("a short note")
    (folder / ".hidden.png").write_bytes(b"")  # hidden files are ignored, not reported
    report = make(embedder, index, tmp_path).run(iter_sources([folder]))
    assert report.added == len(good) + len(odd) + 1
    reasons = dict(report.skipped)
    assert set(reasons) == {str(p) for p in bad.values()}
    assert "empty file" in reasons[str(bad["zero"])]
    assert "truncated" in reasons[str(bad["truncated"])]
    assert "corrupt" in reasons[str(bad["corrupt"])]
    assert "unsupported format .pdf" in reasons[str(bad["unsupported"])]
    assert "not valid UTF-8" in reasons[str(bad["latin1"])]
    assert index.count("c") == report.added


def test_readding_the_same_content_adds_nothing(embedder, index, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    write_good_images(folder, n=6)
    ing = make(embedder, index, tmp_path)
    assert ing.run(iter_sources([folder])).added == 6
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)  # same bytes elsewhere: same ids
    again = ing.run(iter_sources([folder, copy]))
    assert (again.added, again.already_present, again.duplicates) == (0, 6, 6)
    assert index.count("c") == 6


def test_batched_vectors_match_one_by_one(embedder, index, tmp_path: Path) -> None:
    paths = write_good_images(tmp_path / "in", n=7)
    make(embedder, index, tmp_path).run(iter_sources(paths))
    stored = {r.id: r for r in index.scroll("c", with_vectors=True)}
    for p in paths:
        data = p.read_bytes()
        one = embedder.embed_images([Image.open(p).convert("RGB")])[0]
        np.testing.assert_allclose(stored[content_id(None, data)].vectors["image"], one, atol=1e-5)


def test_manifests_jsonl_and_csv(embedder, index, tmp_path: Path) -> None:
    d = tmp_path / "m"
    write_good_images(d / "imgs", n=3)
    solid((9, 9, 9)).save(d / "served.png")
    with serve_folder(d) as base:
        rows = [
            {"id": "a", "text": "first", "image": "imgs/img_000.png", "colour": "red", "n": 3},
            {"text": "text only", "lang": "en"},
            {"image": f"{base}/served.png"},
            {"image": f"{base}/missing.png"},
            {"colour": "nothing else"},
        ]
        jl = d / "items.jsonl"
        jl.write_text(
            "\n".join(json.dumps(r) for r in rows[:2])
            + "\n{not json\n"
            + "\n".join(json.dumps(r) for r in rows[2:])
            + "\n"
        )
        csvp = d / "items.csv"
        csvp.write_text('id,text,image,tag\nb,"second,\nwith a line break",imgs/img_001.png,x\nc,,imgs/img_002.png,y\n')
        local = ImageLimits(allow_private=True)  # the file server is on loopback
        report = make(embedder, index, tmp_path, limits=local).run(iter_sources([jl, csvp]))
    assert report.added == 5
    reasons = dict(report.skipped)
    assert "invalid JSON" in reasons[f"{jl}:3"]
    assert "HTTP 404" in reasons[f"{jl}:5"]
    assert "neither 'text' nor 'image'" in reasons[f"{jl}:6"]
    a = next(r for r in index.scroll("c") if r.id == "a")
    assert a.payload["meta"] == {"colour": "red", "n": 3}
    assert a.payload["text"] == "first" and a.payload["image"].endswith("imgs/img_000.png")
    assert index.count("c", {"tag": "y"}) == 1
    b = next(r for r in index.scroll("c") if r.id == "b")
    assert b.payload["text"] == "second,\nwith a line break" and b.payload["source"] == f"{csvp}:3"
    both = next(r for r in index.scroll("c", with_vectors=True) if r.id == "a")
    assert set(both.vectors) == {"image", "text", "fused"}


def test_items_with_image_bytes_are_kept_as_blobs(embedder, index, tmp_path: Path) -> None:
    data = png_bytes(solid((200, 10, 10)))
    report = make(embedder, index, tmp_path).add([Item(image=data, payload={"k": 1}), Item(text="hello")])
    assert report.added == 2
    rec = next(r for r in index.scroll("c") if r.payload["image"])
    assert Path(rec.payload["image"]).read_bytes() == data
    assert rec.id == content_id(None, data)


def test_pixel_limit_skips_large_images(embedder, index, tmp_path: Path) -> None:
    solid((1, 1, 1), (100, 100)).save(tmp_path / "big.png")
    solid((1, 1, 2), (10, 10)).save(tmp_path / "small.png")
    report = make(embedder, index, tmp_path, limits=ImageLimits(max_pixels=5000)).run(
        iter_sources([tmp_path / "big.png", tmp_path / "small.png"])
    )
    assert report.added == 1 and "too large" in report.skipped[0][1]


def test_an_unexpected_error_in_one_item_is_reported_and_the_rest_stored(embedder, index, tmp_path: Path) -> None:
    from retllm.embedders.open_clip import OpenClipEmbedder

    class Fussy(OpenClipEmbedder):
        """The real embedder, except that it chokes on 25-pixel-high images."""

        def __init__(self, base: OpenClipEmbedder) -> None:
            self.__dict__.update(base.__dict__)

        def prepare_image(self, image):  # noqa: ANN001, ANN201
            if image.size[1] == 25:
                raise RuntimeError("preprocess blew up")
            return super().prepare_image(image)

    paths = write_good_images(tmp_path / "in", n=4)  # heights 24, 25, 26, 27
    report = Ingestor(Fussy(embedder), index, "c").run(iter_sources(paths))
    assert report.added == 3
    assert report.skipped == [(str(paths[1]), "unexpected RuntimeError: preprocess blew up")]
