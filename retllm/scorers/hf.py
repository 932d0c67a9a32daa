"""Local MLLM scorer over transformers ``AutoModelForImageTextToText`` + ``AutoProcessor``.

One prefill-only forward per pair (batched with left padding), LM head on the last position only,
fp32 scores. Visual retracing runs as hooks; a bounded cache of per-image vision-tower outputs lets a
candidate image seen by an earlier query skip the vision tower.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from retllm.device import resolve_device, resolve_dtype
from retllm.errors import BadItemError, ConfigError, ModelUnavailableError
from retllm.hub import require_hub
from retllm.prompting import Rendered, load_prompt, prompt_for, render
from retllm.scorers.base import Candidate, Score, Scorer, two_way
from retllm.scorers.families import Family, answer_token_ids, family_of, resolve_attr
from retllm.scorers.retrace import RetraceConfig, visual_retracing
from retllm.types import Query

log = logging.getLogger(__name__)

DEFAULT_HF_MODEL = "HuggingFaceTB/SmolVLM-256M-Instruct"
QUALITY_HF_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"


def _image_key(im: Image.Image) -> str:
    h = hashlib.sha256(f"{im.mode}{im.size}".encode())
    h.update(im.tobytes())
    return h.hexdigest()


def _nbytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(v) for v in value)
    return 0


class VisionCache:
    """Bounded LRU of per-image vision outputs (``pooler_output`` rows, deepstack features).

    Bounded both by entries (``capacity``) and by tensor bytes (``max_bytes``): one large image can
    produce thousands of vision tokens, so a count alone does not bound memory.
    """

    def __init__(self, capacity: int = 256, max_bytes: int | None = None) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes
        self._d: OrderedDict[str, Any] = OrderedDict()
        self._sizes: dict[str, int] = {}
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> Any:
        if key in self._d:
            self._d.move_to_end(key)
            self.hits += 1
            return self._d[key]
        self.misses += 1
        return None

    def put(self, key: str, value: Any) -> None:
        size = _nbytes(value)
        if self.max_bytes is not None and size > self.max_bytes:
            return  # larger than the whole budget: not kept
        if key in self._d:
            self.bytes -= self._sizes[key]
        self._d[key] = value
        self._sizes[key] = size
        self.bytes += size
        self._d.move_to_end(key)
        while len(self._d) > self.capacity or (self.max_bytes is not None and self.bytes > self.max_bytes):
            old, _ = self._d.popitem(last=False)
            self.bytes -= self._sizes.pop(old)

    def __len__(self) -> int:
        return len(self._d)

    def clear(self) -> None:
        self._d.clear()
        self._sizes.clear()
        self.bytes = 0


def resolve_hf_model(id_or_path: str) -> str:
    """A local folder for ``id_or_path``: the folder itself, or the cached hub snapshot (hub checked fast)."""
    if Path(id_or_path).expanduser().is_dir():
        return str(Path(id_or_path).expanduser())
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(id_or_path, local_files_only=True)
    except Exception:  # not cached (LocalEntryNotFoundError and friends)
        fix = "download it on a connected machine, or set RETLLM_SCORER=hf:/path/to/model-folder"
        require_hub(f"hf:{id_or_path}", fix)
        try:
            return snapshot_download(id_or_path)
        except Exception as e:
            raise ModelUnavailableError(f"could not download hf:{id_or_path}: {e}; {fix}") from e


class HFScorer(Scorer):
    """Pointwise scores from a local Hugging Face MLLM.

    Args:
        model: A loaded ``*ForConditionalGeneration`` model in eval mode.
        processor: Its processor (tokenizer, image processor, chat template).
        batch_size: Pairs per forward.
        retrace: Visual retracing settings (``None`` or ``enabled=False`` turns it off).
        vision_cache_size: Images kept in the vision cache (0 disables it).
        vision_cache_mb: Memory bound of the vision cache in MiB (``None``: entries only).
        image_side: Longest side in px of the images the model sees (``None``: the processor's own
            setting). Tiled families (Idefics3/SmolVLM) round it up to whole tiles. Smaller is faster.
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        model_id: str = "hf",
        batch_size: int = 8,
        retrace: RetraceConfig | None = None,
        vision_cache_size: int = 256,
        vision_cache_mb: float | None = 1024,
        image_side: int | None = None,
    ) -> None:
        self.model = model.eval()
        self.processor = processor
        self.family: Family = family_of(model)
        self.id = model_id
        self.batch_size = batch_size
        self.retrace = retrace if retrace is not None else RetraceConfig()
        self.tokenizer = processor.tokenizer
        self.tokenizer.padding_side = "left"
        self.answer_ids = answer_token_ids(self.tokenizer, self.family)
        self.text_model = resolve_attr(model, self.family.text_model)
        self.lm_head = model.get_output_embeddings()
        self.image_token_id = getattr(model.config, "image_token_id", None)
        use_cache = vision_cache_size > 0 and self.family.vision_cache
        self.image_side = image_side
        self._proc_kwargs: dict[str, Any] = {}
        if image_side is not None and self.family.tiled:
            ip = processor.image_processor
            tile = int(ip.max_image_size["longest_edge"])
            own = int(ip.size["longest_edge"]) if ip.do_image_splitting else tile
            self._proc_kwargs["size"] = {"longest_edge": min(own, max(1, -(-image_side // tile)) * tile)}
        max_bytes = int(vision_cache_mb * 2**20) if vision_cache_mb is not None else None
        self.vision_cache: VisionCache | None = VisionCache(vision_cache_size, max_bytes) if use_cache else None

    @classmethod
    def from_pretrained(cls, id_or_path: str, *, device: str = "auto", dtype: str = "auto", **kwargs: Any) -> HFScorer:
        """Load a model folder or hub id (cached snapshots are used without touching the network)."""
        from transformers import AutoModelForImageTextToText, AutoProcessor

        path = resolve_hf_model(id_or_path)
        dev = resolve_device(device)
        dt = resolve_dtype(dev, dtype)
        try:
            model = AutoModelForImageTextToText.from_pretrained(path, dtype=dt).to(dev)  # type: ignore[arg-type]
            processor = AutoProcessor.from_pretrained(path)
        except (OSError, ValueError, KeyError) as e:
            raise ConfigError(f"could not load hf:{id_or_path}: {e}") from e
        return cls(model, processor, model_id=f"hf:{id_or_path}", **kwargs)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # --- prompts -------------------------------------------------------------------------------

    def _pair(self, query: Query, q_img: Image.Image | None, c: Candidate) -> tuple[Rendered, list[Image.Image]]:
        spec = prompt_for(query.modality, c.modality)
        r = render(
            spec,
            query_text=query.text,
            query_image=q_img is not None,
            candidate_text=c.text,
            candidate_image=c.image is not None,
        )
        images = []
        for role in r.image_roles:
            if role == "query":
                assert q_img is not None
                images.append(q_img)
            else:
                assert c.image is not None
                images.append(self._fit(self.load(c.image)))
        return r, images

    def _query_image(self, query: Query) -> Image.Image | None:
        """The query's image, loaded and fitted once per query (it goes into every pair)."""
        return self._fit(self.load(query.image)) if query.image is not None else None

    def _fit(self, im: Image.Image) -> Image.Image:
        """Downscale to ``image_side`` (untiled families; tiled ones are sized by the processor)."""
        side = self.image_side
        if side is None or self.family.tiled or max(im.size) <= side:
            return im
        scale = side / max(im.size)
        return im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.BICUBIC)

    def _chat_text(self, r: Rendered) -> str:
        content = [{"type": "image"} if k == "image" else {"type": "text", "text": v} for k, v in r.parts]
        return str(
            self.processor.apply_chat_template(
                [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
            )
        )

    # --- vision cache ----------------------------------------------------------------------------

    def _cached_features(self, keys: list[str], encode: Any) -> list[Any]:
        """Per-image entries: from the cache, else from ``encode(indices)`` run once per distinct new image
        (an image query repeats its image in every pair of the batch)."""
        assert self.vision_cache is not None
        feats: list[Any] = [self.vision_cache.get(k) for k in keys]
        first: dict[str, int] = {}
        for i, f in enumerate(feats):
            if f is None:
                first.setdefault(keys[i], i)
        todo = list(first.values())
        if todo:
            new = dict(zip((keys[i] for i in todo), encode(todo), strict=True))
            for key, entry in new.items():
                self.vision_cache.put(key, entry)
            feats = [f if f is not None else new[keys[i]] for i, f in enumerate(feats)]
        return feats

    def _inject_qwen_vision(self, inputs: dict[str, Any], images: list[Image.Image]) -> None:
        """Qwen layouts: ``pixel_values`` rows per image follow ``image_grid_thw``."""
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        grid = inputs["image_grid_thw"]
        pv = inputs.pop("pixel_values").split(grid.prod(-1).tolist())

        def encode(todo: list[int]) -> list[Any]:
            out = self.model.model.get_image_features(torch.cat([pv[i] for i in todo]), grid[todo], return_dict=True)
            ds = getattr(out, "deepstack_features", None) if self.family.deepstack else None
            return [(out.pooler_output[j], [layer[j] for layer in ds] if ds else None) for j in range(len(todo))]

        feats = self._cached_features([_image_key(im) for im in images], encode)
        vis = BaseModelOutputWithPooling(pooler_output=tuple(f[0] for f in feats))  # type: ignore[arg-type]
        if self.family.deepstack:
            n_layers = len(feats[0][1])
            vis.deepstack_features = [tuple(f[1][li] for f in feats) for li in range(n_layers)]
        inputs["mm_encoder_outputs"] = {"image": vis}

    def _idefics_tiles(
        self, inputs: dict[str, Any], images: list[list[Image.Image]]
    ) -> list[tuple[int, int, int]] | None:
        """(sample, first tile, tiles) per image, read from the expanded prompt: every image ends with a
        ``<global-img>`` block of ``image_seq_len`` image tokens, preceded by its split tiles' blocks.
        ``None`` when the layout is not the one expected (the batch then runs without the cache)."""
        seq = getattr(self.processor, "image_seq_len", None)
        g_id = self.tokenizer.convert_tokens_to_ids("<global-img>")
        if not isinstance(seq, int) or seq <= 0 or g_id is None or g_id == self.tokenizer.unk_token_id:
            return None
        ids, pv = inputs["input_ids"], inputs["pixel_values"]
        tiles = []
        for b, ims in enumerate(images):
            cum = (ids[b] == self.image_token_id).cumsum(0)
            glob = (ids[b] == g_id).nonzero().flatten().tolist()
            if len(glob) != len(ims):
                return None
            prev, start = -seq, 0
            for g in glob:
                n_tok = int(cum[g]) - prev
                if n_tok <= 0 or n_tok % seq:
                    return None
                tiles.append((b, start, n_tok // seq))
                start, prev = start + n_tok // seq, int(cum[g])
            real = pv[b].flatten(1).ne(0).any(1)  # padding tiles are all zeros, at the end
            if int(cum[-1]) != prev + seq or not bool(real[:start].all()) or bool(real[start:].any()):
                return None
        return tiles

    def _inject_idefics_vision(self, inputs: dict[str, Any], images: list[list[Image.Image]]) -> None:
        """Idefics3/SmolVLM: each image is split into tiles (plus a global view) along the sample's image axis."""
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        tiles = self._idefics_tiles(inputs, images)
        if tiles is None:
            log.debug("unexpected Idefics3 image layout; this batch runs without the vision cache")
            return
        pv, pam = inputs.pop("pixel_values"), inputs.pop("pixel_attention_mask", None)
        seq = int(self.processor.image_seq_len)

        def encode(todo: list[int]) -> list[Any]:
            parts = [tiles[i] for i in todo]
            sub_pv = torch.cat([pv[b, s : s + n] for b, s, n in parts])[None]
            sub_pam = torch.cat([pam[b, s : s + n] for b, s, n in parts])[None] if pam is not None else None
            out = self.model.model.get_image_features(sub_pv, sub_pam, return_dict=True)
            flat = out.pooler_output[0]
            return [(f, None) for f in flat.split([n * seq for _, _, n in parts])]

        feats = self._cached_features([_image_key(im) for ims in images for im in ims], encode)
        vis = BaseModelOutputWithPooling(pooler_output=tuple(f[0] for f in feats))  # type: ignore[arg-type]
        inputs["mm_encoder_outputs"] = {"image": vis}

    # --- scoring ---------------------------------------------------------------------------------

    @torch.inference_mode()
    def _forward(self, texts: list[str], images: list[list[Image.Image]]) -> tuple[torch.Tensor, list[int | None]]:
        flat = [im for ims in images for im in ims]
        kw = self._proc_kwargs if flat else {}
        inputs = dict(
            self.processor(text=texts, images=images if flat else None, padding=True, return_tensors="pt", **kw)
        )
        inputs = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        if "pixel_values" in inputs and inputs["pixel_values"].is_floating_point():
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        if self.vision_cache is not None and flat:
            if self.family.tiled:
                self._inject_idefics_vision(inputs, images)
            elif "image_grid_thw" in inputs:
                self._inject_qwen_vision(inputs, flat)
        attn = inputs["attention_mask"]
        image_mask = inputs["input_ids"] == self.image_token_id if self.image_token_id is not None else None
        retraced: list[int | None] = [None] * len(texts)
        if self.retrace.enabled:
            with visual_retracing(self.text_model, self.lm_head, self.retrace, attn, image_mask) as st:
                out = self.model(**inputs, logits_to_keep=1, use_cache=False)
            retraced = list(st.fired)
        else:
            out = self.model(**inputs, logits_to_keep=1, use_cache=False)
        return out.logits[:, -1, :].float(), retraced

    def _label_ids(self, n: int) -> list[int]:
        prefix = " " if self.family.answers[0].startswith(" ") else ""
        ids = []
        for d in range(n):
            for word in (f"{prefix}{d}", str(d)):
                tok = self.tokenizer.encode(word, add_special_tokens=False)
                if len(tok) == 1:
                    ids.append(int(tok[0]))
                    break
            else:
                raise ConfigError(f"option label {d} is not a single token for {self.family.name}")
        return ids

    def _option_logprobs(self, query: Query, shown: list[str]) -> tuple[list[float], str]:
        q_img = self._query_image(query)
        r = render(load_prompt("listwise"), query_text=query.text, query_image=q_img is not None, options=shown)
        logits, _ = self._forward([self._chat_text(r)], [[q_img]] if q_img is not None else [[]])
        sel = logits[0, self._label_ids(len(shown))]
        return F.log_softmax(sel, -1).tolist(), "logits"

    def score(self, query: Query, candidates: Sequence[Candidate]) -> list[Score]:
        q_img = self._query_image(query)
        results: list[Score | None] = [None] * len(candidates)
        prepared: list[tuple[int, str, list[Image.Image]]] = []
        for i, c in enumerate(candidates):
            try:
                r, ims = self._pair(query, q_img, c)
            except BadItemError as e:  # one bad candidate image must not fail the query
                log.warning("candidate %s not scored: %s", c.id, e)
                results[i] = Score(value=c.coarse_score, method="coarse", error=str(e))
                continue
            prepared.append((i, self._chat_text(r), ims))
        # Batches hold pairs with the same number of images: processors need it, and padding stays small.
        groups: dict[int, list[tuple[int, str, list[Image.Image]]]] = {}
        for p in prepared:
            groups.setdefault(len(p[2]), []).append(p)
        chunks = [g[s : s + self.batch_size] for g in groups.values() for s in range(0, len(g), self.batch_size)]
        for chunk in chunks:
            t0 = time.perf_counter()
            logits, retraced = self._forward([p[1] for p in chunk], [p[2] for p in chunk])
            dt = (time.perf_counter() - t0) / len(chunk)
            logp = F.log_softmax(logits, dim=-1)
            ent = -(logp.exp() * logp).sum(-1)
            t_id, f_id = self.answer_ids
            for row, (i, _, _) in enumerate(chunk):
                lt, lf = logits[row, t_id].item(), logits[row, f_id].item()
                results[i] = Score(
                    value=two_way(lt, lf),
                    p_true=float(logp[row, t_id].exp()),
                    entropy=float(ent[row]),
                    method="logits",
                    retraced=retraced[row],
                    latency_s=dt,
                )
        return [r for r in results if r is not None]
