from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from retllm.embedders.base import fuse, l2_normalise
from retllm.errors import ConfigError, EmptyQueryError
from retllm.registry import make_embedder, make_index
from retllm.settings import Settings
from retllm.types import Item, Query, content_id, point_id


def test_query_needs_text_or_image() -> None:
    with pytest.raises(EmptyQueryError):
        Query()
    with pytest.raises(EmptyQueryError):
        Query(text="  ")
    assert Query(text="a", image=b"x").modality == "text+image"
    assert Query(image="x.png").modality == "image"


def test_item_needs_content() -> None:
    with pytest.raises(ValidationError, match="needs text, an image, or both"):
        Item(payload={"a": 1})


def test_ids_are_stable_and_content_sensitive() -> None:
    assert content_id("a", b"img") == content_id("a", b"img")
    assert (
        len(
            {
                content_id("a", b"img"),
                content_id("b", b"img"),
                content_id("a", b"im"),
                content_id("a", None),
                content_id(None, b"img"),
            }
        )
        == 5
    )
    assert point_id("x") == point_id("x") != point_id("y")


def test_fusion_is_the_normalised_weighted_sum() -> None:
    a = l2_normalise(np.array([[3.0, 4.0]], np.float32))[0]
    b = np.array([1.0, 0.0], np.float32)
    f = fuse(a, b, 0.5)
    np.testing.assert_allclose(f, (a + b) / np.linalg.norm(a + b), atol=1e-6)
    np.testing.assert_allclose(fuse(a, b, 1.0), a, atol=1e-6)


def test_settings_validation(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("RETLLM_QDRANT_API_KEY", "k")
    with pytest.raises(ValidationError, match="RETLLM_QDRANT_URL is not"):
        Settings()
    monkeypatch.setenv("RETLLM_QDRANT_URL", "http://localhost:6333")
    monkeypatch.setenv("RETLLM_DATA_DIR", str(tmp_path))
    s = Settings()
    assert s.qdrant_api_key is not None and s.qdrant_api_key.get_secret_value() == "k"
    assert s.edge_dir == tmp_path / "edge"


def test_vision_cache_is_bounded_by_entries_and_bytes(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    import torch

    from retllm.scorers.vision_cache import VisionCache

    kib = torch.zeros(256)  # 1 KiB of fp32
    c = VisionCache(capacity=3, max_bytes=2560)
    c.put("a", (kib, None))
    c.put("b", (kib, [kib[:128]]))  # 1.5 KiB with its deepstack part
    assert c.bytes == 2560 and len(c) == 2
    c.put("c", (kib, None))  # over the byte budget: the oldest goes
    assert c.get("a") is None and c.get("b") is not None and c.bytes == 2560
    c.put("b", (kib[:64], None))  # replacing an entry re-counts its bytes
    assert c.bytes == 1024 + 256 and len(c) == 2
    c.put("huge", (torch.zeros(1024), None))  # bigger than the whole budget: not kept, nothing evicted
    assert c.get("huge") is None and len(c) == 2
    for k in "defg":
        c.put(k, (kib[:1], None))
    assert len(c) == 3 and c.get("d") is None  # the entry bound still holds
    c.clear()
    assert len(c) == 0 and c.bytes == 0
    monkeypatch.setenv("RETLLM_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("RETLLM_VISION_CACHE_MB", "0")
    with pytest.raises(ValidationError, match="greater than 0"):
        Settings()
    monkeypatch.setenv("RETLLM_VISION_CACHE_MB", "64")
    assert Settings().vision_cache_mb == 64
    monkeypatch.setenv("RETLLM_SCORER_IMAGE_SIDE", "8")
    with pytest.raises(ValidationError, match="greater than or equal to 28"):
        Settings()
    monkeypatch.setenv("RETLLM_SCORER_IMAGE_SIDE", "512")
    assert Settings().scorer_image_side == 512


def test_registry_errors_list_valid_choices(tmp_path) -> None:
    s = Settings(data_dir=tmp_path)
    with pytest.raises(ConfigError, match="valid: open_clip"):
        make_embedder(s, "clip:foo")
    with pytest.raises(ConfigError, match="provider:model"):
        make_embedder(s, "open_clip")
    with pytest.raises(ConfigError, match="unknown open_clip model 'ViT-Nope'"):
        make_embedder(s, "open_clip:ViT-Nope@x")
    with pytest.raises(ConfigError, match="valid: .*laion2b_s34b_b79k"):
        make_embedder(s, "open_clip:ViT-B-32@nosuchtag")
    with pytest.raises(ConfigError, match="no open_clip_config.json"):
        make_embedder(s, f"open_clip:local-dir:{tmp_path}")
    assert type(make_index(s)).__name__ == "EdgeIndex"
    assert type(make_index(s, ":memory:")).__name__ == "QdrantIndex"


def test_embedder_outputs_are_unit_vectors(embedder) -> None:
    from PIL import Image

    v = embedder.embed_texts(["a", "b c"])
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    q = embedder.embed_query("a", Image.new("RGB", (9, 9), (1, 2, 3)))
    assert set(q) == {"text", "image", "fused"}
    np.testing.assert_allclose(q["fused"], fuse(q["image"], q["text"]), atol=1e-6)


def test_retrace_settings_from_env_and_validation(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("RETLLM_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("RETLLM_RETRACE__THRESHOLD", "0.5")
    monkeypatch.setenv("RETLLM_RETRACE__V_ROWS", "image")
    s = Settings()
    assert s.retrace.threshold == 0.5 and s.retrace.v_rows == "image" and s.retrace.start == 5
    monkeypatch.setenv("RETLLM_RETRACE__END", "6")
    with pytest.raises(ValidationError, match="window"):
        Settings()
    monkeypatch.setenv("RETLLM_RETRACE__END", "16")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    assert Settings().openai_api_key.get_secret_value() == "sk-x"


def test_vision_cache_is_safe_under_concurrent_use() -> None:
    """Many threads putting and getting: the byte count always matches the entries kept, nothing raises."""
    import torch

    from retllm.scorers.vision_cache import VisionCache, nbytes
    from tests.threads import run_threads

    c = VisionCache(capacity=16, max_bytes=40 * 1024)

    def work(t: int) -> None:
        for i in range(400):
            key = f"k{(t * 7 + i) % 40}"
            if c.get(key) is None:
                c.put(key, (torch.zeros(64 + (i % 5) * 64), None))

    assert run_threads(work, 8) == []
    assert c.bytes == sum(nbytes(v) for v in c._d.values()) and len(c) <= 16 and c.bytes <= 40 * 1024


def test_dtype_resolution() -> None:
    import torch

    from retllm.device import resolve_dtype

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_dtype(cpu) == torch.float32
    assert resolve_dtype(cuda, bf16_ok=True) == torch.bfloat16
    assert resolve_dtype(cuda, bf16_ok=False) == torch.float16  # T4, V100: no bf16
    assert resolve_dtype(cuda, "fp32", bf16_ok=False) == torch.float32
    with pytest.raises(ConfigError, match="invalid dtype"):
        resolve_dtype(cpu, "int4")


def test_component_settings(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("RETLLM_DATA_DIR", str(tmp_path))
    s = Settings()
    assert (s.scorer_min_image_tokens, s.scorer_max_image_tokens) == (256, 512)  # the paper's budget
    assert s.scorer_cross_query is True and s.vector_fusion == "rank" and s.min_score is None
    monkeypatch.setenv("RETLLM_MAX_IMAGE_PIXELS", "1234")
    monkeypatch.setenv("RETLLM_URL_TIMEOUT", "2.5")
    limits = Settings().image_limits
    assert (limits.max_pixels, limits.url_timeout) == (1234, 2.5)
    monkeypatch.setenv("RETLLM_SCORER_MIN_IMAGE_TOKENS", "")  # empty: the checkpoint's own
    monkeypatch.setenv("RETLLM_SCORER_MAX_IMAGE_TOKENS", "1024")
    assert (Settings().scorer_min_image_tokens, Settings().scorer_max_image_tokens) == (None, 1024)
    monkeypatch.setenv("RETLLM_SCORER_MIN_IMAGE_TOKENS", "2048")
    with pytest.raises(ValidationError, match="MIN_IMAGE_TOKENS \\(2048\\) is above"):
        Settings()
    monkeypatch.delenv("RETLLM_SCORER_MIN_IMAGE_TOKENS")
    monkeypatch.setenv("RETLLM_VECTOR_FUSION", "max")
    with pytest.raises(ValidationError, match="rrf"):
        Settings()
    monkeypatch.setenv("RETLLM_VECTOR_FUSION", "dbsf")
    monkeypatch.setenv("RETLLM_MIN_SCORE", "1.5")
    with pytest.raises(ValidationError, match="less than or equal to 1"):
        Settings()
    monkeypatch.setenv("RETLLM_MIN_SCORE", "0.7")
    s = Settings()
    assert s.min_score == 0.7 and s.vector_fusion == "dbsf"
    with make_index(s) as index:
        assert index.fusion == "dbsf"


def test_transformers_is_pinned_to_the_major_whose_apis_we_use() -> None:
    """The vision cache injects through ``mm_encoder_outputs``, added in transformers 5.18; 6.x may move it."""
    import tomllib
    from pathlib import Path

    import transformers
    from packaging.requirements import Requirement

    root = Path(__file__).resolve().parents[2]
    deps = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    spec = Requirement(next(d for d in deps if d.startswith("transformers"))).specifier
    assert spec.contains("5.18.0") and spec.contains("5.99") and not spec.contains("5.17.0")
    assert not spec.contains("6.0.0") and spec.contains(transformers.__version__)
