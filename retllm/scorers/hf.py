"""Local MLLM scorer over transformers ``AutoModelForImageTextToText`` + ``AutoProcessor``.

One prefill-only forward per pair (batched with left padding), LM head on the last position only,
fp32 scores. Visual retracing runs as hooks; a bounded cache of per-image vision-tower outputs lets a
candidate image seen by an earlier query skip the vision tower. Every forward runs on the scorer's
worker thread (:mod:`retllm.scorers.batching`), so one scorer serves any number of threads, and
pairs of concurrent queries share batches.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from retllm.device import resolve_device, resolve_dtype
from retllm.errors import BadItemError, ConfigError, ModelUnavailableError, ScoringError
from retllm.hub import require_hub
from retllm.images import ImageLimits
from retllm.prompting import Rendered, load_prompt, prompt_for, render
from retllm.scorers.base import DEFAULT_MAX_QUERY_TOKENS, Candidate, Score, Scorer, two_way
from retllm.scorers.batching import BatchWorker
from retllm.scorers.families import FAMILIES, Family, answer_token_ids, family_of, resolve_attr
from retllm.scorers.retrace import RetraceConfig, visual_retracing
from retllm.scorers.text_only import load_text_only
from retllm.scorers.turns import Turn, query_key
from retllm.scorers.vision_cache import VisionCache, image_key
from retllm.types import Query

log = logging.getLogger(__name__)

DEFAULT_HF_MODEL = "HuggingFaceTB/SmolVLM-256M-Instruct"
QUALITY_HF_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"
PAPER_IMAGE_TOKENS = (256, 512)
"""Visual tokens per image in the research code: Qwen processors with min_pixels=256*28**2, max_pixels=512*28**2."""


@dataclass
class _Pair:
    """One forward row: the chat text, its images in order, and the token ids whose scores are wanted."""

    text: str
    images: list[Image.Image]
    ids: tuple[int, ...]


@dataclass
class _Row:
    """What a forward gives one pair: logits and log-probabilities at its ids, entropy, retracing layer."""

    logits: list[float]
    logp: list[float]
    entropy: float
    retraced: int | None
    latency_s: float


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
        image_tokens: (min, max) visual tokens per image for families sized by a token budget (Qwen);
            default the research code's 256-512; ``None`` (or a ``None`` bound) keeps the checkpoint's own.
            Small images are enlarged to the minimum, large ones shrunk to the maximum.
        cross_query: Let pairs of concurrent calls share forwards (more throughput; a pair's score then
            moves with its batch neighbours at the ~1e-6 level, as it does with k). ``False``: each call
            is batched alone, bit-identical to running the calls one at a time.
        limits: How candidate and query images are read.
        max_query_tokens: Query text past this many tokens (of this model's tokenizer) is cut; None: never.
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
        image_tokens: tuple[int | None, int | None] | None = PAPER_IMAGE_TOKENS,
        cross_query: bool = True,
        limits: ImageLimits | None = None,
        max_query_tokens: int | None = DEFAULT_MAX_QUERY_TOKENS,
    ) -> None:
        self.model = model.eval()
        self.max_query_tokens = max_query_tokens
        self.processor = processor
        self.family: Family = family_of(model)
        self.id = model_id
        self.batch_size = batch_size
        self.retrace = retrace if retrace is not None else RetraceConfig()
        self.limits = limits or ImageLimits()
        self.tokenizer = processor.tokenizer
        self.tokenizer.padding_side = "left"
        self.text_model = resolve_attr(model, self.family.text_model)
        self.lm_head = model.get_output_embeddings()
        self.image_token_id = getattr(model.config, "image_token_id", None)
        if self.family.text_only and self.retrace.enabled and self.retrace.v_rows == "image":
            raise ConfigError(
                f"{model_id} is a text-only model: retracing has no image rows to read; "
                "set RETLLM_RETRACE__V_ROWS=all or RETLLM_RETRACE__ENABLED=false"
            )
        self.image_side = image_side
        self._proc_kwargs: dict[str, Any] = {}
        # The least image the processor uses, so decoding may reduce towards it (nothing known: the full image).
        self._need: dict[str, int] = {"fit_side": image_side} if image_side is not None else {}
        ip = processor.image_processor
        if self.family.tiled:
            tile = int(ip.max_image_size["longest_edge"])
            own = int(ip.size["longest_edge"]) if ip.do_image_splitting else tile
            if image_side is not None:
                self._proc_kwargs["size"] = {"longest_edge": min(own, max(1, -(-image_side // tile)) * tile)}
            self._need = {"fit_side": int(self._proc_kwargs.get("size", {}).get("longest_edge", own))}
        if self.family.token_budget:
            if image_tokens is not None:
                self._proc_kwargs["size"] = self._token_budget(*image_tokens)
            most = (self._proc_kwargs.get("size") or getattr(ip, "size", None) or {}).get("longest_edge")
            self._need = {"min_pixels": int(most)} if most else {}  # Qwen's longest_edge is a pixel count
        use_cache = vision_cache_size > 0 and self.family.vision_cache
        max_bytes = int(vision_cache_mb * 2**20) if vision_cache_mb is not None else None
        self.vision_cache: VisionCache | None = VisionCache(vision_cache_size, max_bytes) if use_cache else None
        # Tokenizer calls are not safe against a concurrent padded batch call: ids are computed under a lock.
        self._ids_lock = threading.Lock()
        self._answer_id_cache: dict[tuple[str, ...], tuple[int, ...]] = {}
        self._label_id_cache: dict[str, tuple[int, ...]] = {}
        self._model_lock = threading.Lock()
        self._worker: BatchWorker[_Pair, _Row] = BatchWorker(
            self._run_batch,
            batch_size=batch_size,
            cross_query=cross_query,
            on_error=self._after_error,
            name=f"retllm-{model_id}",
        )
        self.answer_ids = list(self._answer_ids(load_prompt("text_to_image").answer_words))

    def _token_budget(self, lo: int | None, hi: int | None) -> dict[str, int]:
        """The processor's ``size`` (pixel bounds) for a budget of ``lo``-``hi`` visual tokens per image."""
        ip = self.processor.image_processor
        unit = int(ip.patch_size * ip.merge_size) ** 2  # pixels per visual token after the 2x2 merge
        size = {"shortest_edge": int(ip.size["shortest_edge"]), "longest_edge": int(ip.size["longest_edge"])}
        if lo is not None:
            size["shortest_edge"] = lo * unit
        if hi is not None:
            size["longest_edge"] = hi * unit
        if self.image_side is not None:  # an explicit side cap wins over the minimum: never enlarge past it
            size["shortest_edge"] = min(size["shortest_edge"], self.image_side**2)
        if size["shortest_edge"] > size["longest_edge"]:
            raise ConfigError(
                f"image token budget: the minimum ({size['shortest_edge'] // unit}) is above the maximum "
                f"({size['longest_edge'] // unit}); check RETLLM_SCORER_MIN_IMAGE_TOKENS / _MAX_IMAGE_TOKENS"
            )
        return size

    @classmethod
    def from_pretrained(cls, id_or_path: str, *, device: str = "auto", dtype: str = "auto", **kwargs: Any) -> HFScorer:
        """Load a model folder or hub id (cached snapshots are used without touching the network)."""
        from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

        path = resolve_hf_model(id_or_path)
        dev = resolve_device(device)
        dt = resolve_dtype(dev, dtype)
        try:
            model_type = getattr(AutoConfig.from_pretrained(path), "model_type", None)
            family = FAMILIES.get(model_type or "")
            if family is not None and family.text_only:
                model, processor = load_text_only(path, dt)
                model = model.to(dev)
            else:
                model = AutoModelForImageTextToText.from_pretrained(path, dtype=dt).to(dev)  # type: ignore[arg-type]
                processor = AutoProcessor.from_pretrained(path)
        except (OSError, ValueError, KeyError) as e:
            raise ConfigError(f"could not load hf:{id_or_path}: {e}") from e
        return cls(model, processor, model_id=f"hf:{id_or_path}", **kwargs)

    @classmethod
    def from_settings(cls, id_or_path: str, settings: Any) -> HFScorer:
        """Load with every local-scorer option taken from :class:`retllm.settings.Settings`."""
        return cls.from_pretrained(
            id_or_path,
            device=settings.device,
            dtype=settings.dtype,
            batch_size=settings.scorer_batch_size,
            retrace=settings.retrace,
            vision_cache_size=settings.vision_cache_size,
            vision_cache_mb=settings.vision_cache_mb,
            image_side=settings.scorer_image_side,
            image_tokens=(settings.scorer_min_image_tokens, settings.scorer_max_image_tokens),
            cross_query=settings.scorer_cross_query,
            limits=settings.image_limits,
            max_query_tokens=settings.max_query_tokens,
        )

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
                images.append(self._fit(self.load(c.image, **self._need)))
        return r, images

    def _query_image(self, query: Query) -> Image.Image | None:
        """The query's image, loaded and fitted once per query (it goes into every pair)."""
        return self._fit(self.load(query.image, **self._need)) if query.image is not None else None

    def _fit(self, im: Image.Image) -> Image.Image:
        """Downscale to ``image_side`` (untiled families; tiled ones are sized by the processor)."""
        side = self.image_side
        if side is None or self.family.tiled or max(im.size) <= side:
            return im
        scale = side / max(im.size)
        return im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.BICUBIC)

    def cut_text(self, text: str, max_tokens: int) -> str:
        """``text`` cut after its ``max_tokens``-th token of this model's tokenizer (no token spans 64
        characters, so the tokenizer never sees more than ``64 * max_tokens`` of a huge text)."""
        head = text[: 64 * max_tokens]
        with self._model_lock:  # the tokenizer's state is not safe against the worker's padded batch call
            try:
                enc = self.tokenizer(head, add_special_tokens=False, return_offsets_mapping=True)
                ends = [int(e) for _, e in enc["offset_mapping"]]
            except NotImplementedError:  # a slow tokenizer has no offsets: decode the kept tokens instead
                ids = self.tokenizer(head, add_special_tokens=False)["input_ids"]
                return str(self.tokenizer.decode(ids[:max_tokens])) if len(ids) > max_tokens else head
        return text[: ends[max_tokens - 1]] if len(ends) > max_tokens else head

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
        (an image query repeats its image in every pair of the batch).

        Without cross-query batching (the bit-identical mode) each new image goes through the tower alone:
        batched with others its features move at the 1e-7 level with its neighbours (fp32), and a score would
        then depend on what happened to be cached. With it, new images share one tower call (faster on GPUs).
        """
        assert self.vision_cache is not None
        feats: list[Any] = [self.vision_cache.get(k) for k in keys]
        first: dict[str, int] = {}
        for i, f in enumerate(feats):
            if f is None:
                first.setdefault(keys[i], i)
        todo = list(first.values())
        if todo:
            if self._worker.cross_query:
                new = dict(zip((keys[i] for i in todo), encode(todo), strict=True))
            else:
                new = {keys[i]: encode([i])[0] for i in todo}
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

        feats = self._cached_features([image_key(im) for im in images], encode)
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

        feats = self._cached_features([image_key(im) for ims in images for im in ims], encode)
        vis = BaseModelOutputWithPooling(pooler_output=tuple(f[0] for f in feats))  # type: ignore[arg-type]
        inputs["mm_encoder_outputs"] = {"image": vis}

    # --- scoring ---------------------------------------------------------------------------------

    @torch.inference_mode()
    def _forward(self, texts: list[str], images: list[list[Image.Image]]) -> tuple[torch.Tensor, list[int | None]]:
        """Last-position fp32 logits [B, V] and each row's retracing layer. One forward at a time."""
        with self._model_lock:  # the hooks and the vision cache belong to one forward
            return self._forward_locked(texts, images)

    def _forward_locked(
        self, texts: list[str], images: list[list[Image.Image]]
    ) -> tuple[torch.Tensor, list[int | None]]:
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
        if self.retrace.enabled and self.family.text_only:  # retracing reads the decoder's input embeddings
            inputs["inputs_embeds"] = self.model.get_input_embeddings()(inputs.pop("input_ids"))
        retraced: list[int | None] = [None] * len(texts)
        if self.retrace.enabled:
            with visual_retracing(self.text_model, self.lm_head, self.retrace, attn, image_mask) as st:
                out = self.model(**inputs, logits_to_keep=1, use_cache=False)
            retraced = list(st.fired)
        else:
            out = self.model(**inputs, logits_to_keep=1, use_cache=False)
        return out.logits[:, -1, :].float(), retraced

    def _run_batch(self, pairs: list[_Pair]) -> list[_Row]:
        """One forward over ``pairs`` (run by the worker thread)."""
        t0 = time.perf_counter()
        logits, retraced = self._forward([p.text for p in pairs], [p.images for p in pairs])
        logp = F.log_softmax(logits, dim=-1)
        # 0 * log 0 counts as 0: a masked (-inf) vocabulary entry must not turn the entropy into NaN.
        ent = -torch.where(torch.isfinite(logp), logp.exp() * logp, 0.0).sum(-1)
        dt = (time.perf_counter() - t0) / len(pairs)
        rows = []
        for b, p in enumerate(pairs):
            ids = list(p.ids)
            rows.append(_Row(logits[b, ids].tolist(), logp[b, ids].tolist(), float(ent[b]), retraced[b], dt))
        return rows

    def _after_error(self, _exc: BaseException) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()  # an out-of-memory batch is retried in halves

    def _answer_ids(self, words: tuple[str, ...]) -> tuple[int, ...]:
        with self._ids_lock:
            if words not in self._answer_id_cache:
                self._answer_id_cache[words] = tuple(answer_token_ids(self.tokenizer, self.family, words))
            return self._answer_id_cache[words]

    def _label_ids(self, labels: str) -> tuple[int, ...]:
        with self._ids_lock:
            if labels not in self._label_id_cache:
                ids = []
                for d in labels:
                    for word in (f"{self.family.answer_prefix}{d}", d):
                        tok = self.tokenizer.encode(word, add_special_tokens=False)
                        if len(tok) == 1:
                            ids.append(int(tok[0]))
                            break
                    else:
                        raise ConfigError(f"option label {d} is not a single token for {self.family.name}")
                self._label_id_cache[labels] = tuple(ids)
            return self._label_id_cache[labels]

    def _option_logprobs(self, query: Query, shown: list[str]) -> tuple[list[float], str]:
        q_img = self._query_image(query)
        spec = load_prompt("listwise")
        r = render(spec, query_text=query.text, query_image=q_img is not None, options=shown)
        ims = [q_img] if q_img is not None else []
        pair = _Pair(self._chat_text(r), ims, self._label_ids(spec.option_labels[: len(shown)]))
        row = self._worker.run([pair], [len(ims)])[0]
        if isinstance(row, BaseException):
            raise ScoringError(f"listwise forward failed: {type(row).__name__}: {row}") from row
        return F.log_softmax(torch.tensor(row.logits), -1).tolist(), "logits"

    def check_query(self, query: Query, candidates: Sequence[Candidate]) -> None:
        if self.family.text_only and (query.image is not None or any(c.image is not None for c in candidates)):
            raise ConfigError(
                f"{self.id} is a text-only model ({self.family.name}): it scores text pairs only; "
                "use a vision model for images (RETLLM_SCORER=hf:Qwen/Qwen2.5-VL-7B-Instruct)"
            )

    def step(self, turns: Sequence[Turn], *, cancel: threading.Event | None = None) -> None:
        """One batched forward over every ready turn (retracing inside it); every turn ends here. Once ``cancel``
        is set, no further forward of these turns runs (:class:`~retllm.errors.Cancelled`)."""
        ready = [t for t in turns if t.ready]
        if not ready:
            return
        q_imgs: dict[object, Image.Image | None] = {}  # each query's image is loaded and fitted once per step
        todo: list[tuple[Turn, _Pair]] = []
        for t in ready:
            t.steps += 1
            key = query_key(t.query)
            if key not in q_imgs:  # an unreadable query image raises: no pair of that query can be judged
                q_imgs[key] = self._query_image(t.query)
            try:
                r, ims = self._pair(t.query, q_imgs[key], t.candidate)
            except BadItemError as e:  # one bad candidate image must not fail the query
                log.info("candidate %s not scored: %s", t.candidate.id, e)
                t.finish(Score.fallback(str(e)))
                continue
            ids = self._answer_ids(prompt_for(t.query.modality, t.candidate.modality).answer_words)
            todo.append((t, _Pair(self._chat_text(r), ims, ids)))
        # Pairs with different image counts never share a forward: processors need it, and padding stays small.
        rows = self._worker.run([p for _, p in todo], [len(p.images) for _, p in todo], cancel=cancel)
        for (t, _), row in zip(todo, rows, strict=True):
            if isinstance(row, BaseException):
                log.info("candidate %s not scored: %s: %s", t.candidate.id, type(row).__name__, row)
                t.finish(Score.fallback(f"{type(row).__name__}: {row}"))
                continue
            t.latency_s += row.latency_s
            (lt, lf), (lpt, _) = row.logits, row.logp
            if not all(math.isfinite(x) for x in (lt, lf, lpt, row.entropy)):
                t.finish(Score.fallback(f"non-finite logits ({lt}, {lf}): fp16 overflow? set RETLLM_DTYPE=float32"))
                continue
            t.finish(
                Score(
                    value=two_way(lt, lf),
                    p_true=float(torch.tensor(lpt).exp()),
                    entropy=row.entropy,
                    method="logits",
                    retraced=row.retraced,
                )
            )

    def close(self) -> None:
        """Stop the worker thread (queued pairs finish first)."""
        self._worker.close()
