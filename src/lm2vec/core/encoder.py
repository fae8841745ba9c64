"""The Encoder: a decoder backbone + tokenizer + pooling + instruction handling.

Data flows one way: text -> tokens (with a pooling mask) -> hidden states -> pooled vectors.
Training wraps the same Encoder (adapters and objectives around `embed`); evaluation and serving only
call `encode`. A saved Encoder is a plain Hugging Face model directory plus `lm2vec_config.json`.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import logging
import os
import shutil
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from lm2vec.core.batching import pad_batch, plan_batches
from lm2vec.core.bidirectional import make_bidirectional, make_causal
from lm2vec.core.compute import apply_compute_mode, check_adaptive_pooling, tensor_bytes
from lm2vec.core.echo import ECHO_TEMPLATE, check_echo_template, tokenize_echo
from lm2vec.core.errors import CheckpointError, TruncationWarning, checkpoint_errors, warn_truncated  # noqa: F401
from lm2vec.core.extras import build_extras, check_extras_settings, extras_state, output_dim, save_extras
from lm2vec.core.loading import (
    check_model_kwargs,
    default_device,
    hub_kwargs,
    load_dtype,
    places_itself,
    source_kwargs,
)
from lm2vec.core.models import resolve_model_path
from lm2vec.core.pooling import check_pooling_mode, pool
from lm2vec.core.postprocess import check_dimensions, check_precision, finish
from lm2vec.core.tokenization import (
    DEFAULT_TEMPLATE,
    TokenizedText,
    format_prefix,
    tokenize_batch,
    validate_texts,
)
from lm2vec.io import replace_dir, staging_dir

logger = logging.getLogger(__name__)
CONFIG_NAME = "lm2vec_config.json"
# The saved folder's format: raise it when a change means older readers must know (they warn).
FORMAT_VERSION = 1
PROGRESS_MIN_TEXTS = 256
# Called as hook(staging_folder, encoder, previous=target_folder) before a saved folder moves into
# place. lm2vec/__init__.py adds the model-card writer (export/model_card.py): core never imports export.
SAVE_HOOKS: list[Callable[..., None]] = []
# Converters to other libraries' live objects, by name; lm2vec/__init__.py installs export/'s
# sentence-transformers builder as "sentence-transformers", for the same reason.
CONVERTERS: dict[str, Callable[..., Any]] = {}


@dataclass
class EncoderConfig:
    """Everything besides the weights that decides the vectors; saved as lm2vec_config.json."""

    pooling: str = "mean"
    bidirectional: bool = True
    max_length: int = 512
    instruction_template: str = DEFAULT_TEMPLATE
    padding_side: str = "right"
    pool_leading_specials: bool = False  # pool a leading BOS/[CLS] too (sentence-transformers BERT style)
    base_model: str | None = None
    training: dict = field(default_factory=dict)  # stages and their settings, filled by lm2vec.training.loop
    echo: bool = False  # Echo embeddings: the text twice, the second copy pooled (core/echo.py)
    echo_template: str = ECHO_TEMPLATE
    contextual: str | None = None  # pre-encoder of a Causal2Vec contextual token (core/contextual.py)
    contextual_output: str = "concat"  # concat (contextual state, pooled text) | context | text
    latent_attention: bool = False  # NV-Embed latent-attention layer before pooling (core/latent_attention.py)
    latent_attention_latents: int = 512
    latent_attention_heads: int = 8

    def __post_init__(self) -> None:
        check_pooling_mode(self.pooling)
        format_prefix("x", self.instruction_template)  # validates the template
        check_echo_template(self.echo_template)
        check_extras_settings(self)
        if self.max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {self.max_length}")
        if self.padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {self.padding_side!r}")

    @classmethod
    def load(cls, path: Path) -> EncoderConfig:
        """Read a saved config. Keys this version does not know (from a newer lm2vec, or a typo) are
        ignored with one warning that names them, so an older lm2vec can still read a newer folder."""
        data = json.loads(Path(path).read_text())
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known - {"lm2vec_version", "format_version"})
        if unknown:
            written = data.get("format_version", 0)
            newer = (f"; the folder was written by lm2vec {data.get('lm2vec_version')} (format {written}), "
                     f"this is lm2vec {_version()} (format {FORMAT_VERSION})") if written > FORMAT_VERSION else ""
            warnings.warn(f"{path}: ignoring unknown keys {unknown}{newer}", stacklevel=2)
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_json(self) -> str:
        """The lm2vec_config.json text: these settings plus which version and format wrote them."""
        payload = {**asdict(self), "format_version": FORMAT_VERSION, "lm2vec_version": _version()}
        return json.dumps(payload, indent=2) + "\n"


class Encoder(nn.Module):
    """Turns texts into vectors with a (by default bidirectional) decoder LLM."""

    def __init__(self, model: nn.Module, tokenizer, config: EncoderConfig | None = None,
                 folder: str | os.PathLike | None = None) -> None:
        """`folder`: a saved encoder whose extra modules' weights (contextual token, latent attention)
        to load; without it they start fresh."""
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.config = config or EncoderConfig()
        self.name_or_path = getattr(model, "name_or_path", "") or ""
        if self.config.bidirectional:
            make_bidirectional(self.model)
        # trainable modules beside the backbone, float32 (core/extras.py); empty unless the config asks
        self.extras = build_extras(self.config, model, tokenizer, folder).to(next(model.parameters()).device)
        self._accepts_positions = "position_ids" in inspect.signature(self._forward_target().forward).parameters
        self._fingerprint: str | None = None
        self.compute_mode: str | None = None  # set by use_compute_mode: inference only, never saved

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        pooling: str | None = None,
        bidirectional: bool | None = None,
        max_length: int | None = None,
        dtype: str | torch.dtype | None = None,
        device: str | None = None,
        trust_remote_code: bool = False,
        merge_adapter: bool = False,
        model_kwargs: dict[str, Any] | None = None,
        **config_overrides,
    ) -> Encoder:
        """Load a built-in name, a local directory or a hub id; saved lm2vec settings win over defaults,
        explicit arguments win over saved settings. A LoRA adapter directory (from `lm2vec train`) is
        put on the base model its config names, merged into it if `merge_adapter`. `model_kwargs` go to
        `from_pretrained` as they are (attn_implementation, revision, token, device_map, dtype, ...;
        see core/loading.py). `dtype` (a torch dtype, its name, or a fast inference mode: 'bf16-matmul',
        'bf16-adaptive', 'int8-dynamic', see core/compute.py) given here wins over theirs."""
        from transformers import AutoModel, AutoTokenizer

        from lm2vec.core.adapters import is_adapter_dir, load_adapter

        load = {"trust_remote_code": trust_remote_code, **check_model_kwargs(model_kwargs)}
        sources = source_kwargs(load)
        path = resolve_model_path(name_or_path, **hub_kwargs(sources))
        config = load_saved_config(path)
        given = {"pooling": pooling, "bidirectional": bidirectional, "max_length": max_length, **config_overrides}
        config = EncoderConfig(**{**asdict(config), **{k: v for k, v in given.items() if v is not None}})
        config.base_model = config.base_model or str(name_or_path)
        device = device or default_device()
        mode = load_dtype(load, dtype, device)  # dtype from here or model_kwargs; a compute mode loads float32
        adapter = is_adapter_dir(path)
        weights = resolve_model_path(config.base_model, **hub_kwargs(sources)) if adapter else path
        with checkpoint_errors(weights):
            model = AutoModel.from_pretrained(weights, **load)
        if adapter:
            with checkpoint_errors(path):
                model = load_adapter(model, path, merge=merge_adapter or mode is not None)
        tokenizer = AutoTokenizer.from_pretrained(path, **sources)
        if not config.bidirectional:
            make_causal(model)  # a saved bidirectional folder's config.json says is_causal: false
        if not places_itself(load):  # device_map / bitsandbytes placed the weights already
            model.to(device)
        model.eval()
        encoder = cls(model, tokenizer, config, folder=path)
        encoder.name_or_path = str(name_or_path)
        return encoder.use_compute_mode(mode) if mode else encoder

    def use_compute_mode(self, mode: str, float32_layers: int | None = None) -> Encoder:
        """Convert the float32 backbone, in place, for fast inference ('bf16-matmul', 'bf16-adaptive' (mean
        pooling only), 'int8-dynamic'; see core/compute.py). An adapter is merged first. Cannot be undone, and the encoder can no longer be saved."""
        if mode == "bf16-adaptive":
            check_adaptive_pooling(self.config)
        merge = getattr(self.model, "merge_and_unload", None)
        self.model = apply_compute_mode(merge() if callable(merge) else self.model, mode, float32_layers)
        self.compute_mode, self._fingerprint = mode, None
        return self

    def _forward_target(self) -> nn.Module:
        """The module whose forward signature matters (a peft wrapper forwards to it unchanged)."""
        get_base = getattr(self.model, "get_base_model", None)
        return get_base() if callable(get_base) else self.model

    # ---- properties ---------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def embedding_dim(self) -> int:
        return output_dim(self.config, self.model.config.get_text_config().hidden_size)

    @property
    def pad_token_id(self) -> int:
        """Pad id: the tokenizer's, else its EOS (its value never matters: padding is masked out)."""
        for candidate in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id):
            if candidate is not None:
                return int(candidate)
        return 0

    # ---- text -> tokens -> vectors -------------------------------------------------------------
    def tokenize(self, items: list[tuple[str | None, str]]) -> list[TokenizedText]:
        """Token ids per text, with how many instruction tokens pooling must skip."""
        c = self.config
        if not items:
            return []
        if c.echo:
            out = tokenize_echo(self.tokenizer, items, c.max_length, c.echo_template, c.instruction_template)
        else:
            out = tokenize_batch(self.tokenizer, items, c.max_length, c.instruction_template, c.pool_leading_specials)
        if "contextual" in self.extras:  # the pre-encoder reads the text alone, in its own vocabulary
            context = self.extras["contextual"].tokenize([text for _, text in items])
            out = [replace(t, context_ids=ids) for t, ids in zip(out, context)]
        return out

    def collate(self, tokenized: list[TokenizedText], padding_side: str | None = None) -> dict[str, torch.Tensor]:
        """Pad tokenized texts into model-ready tensors (see batching.pad_batch), plus the contextual
        token's pre-encoder inputs when the texts carry them."""
        side = padding_side or self.config.padding_side
        batch = pad_batch([t.ids for t in tokenized], [t.skip for t in tokenized], self.pad_token_id, side,
                          [t.tail for t in tokenized])
        if tokenized and all(t.context_ids is not None for t in tokenized):
            context = pad_batch([t.context_ids for t in tokenized], [0] * len(tokenized), 0, "right")
            batch.update(context_input_ids=context["input_ids"], context_attention_mask=context["attention_mask"])
        return batch

    def _forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Final states (B, T, D) of the batch's tokens and the contextual token's state (B, D) or None."""
        device = self.device
        if "contextual" in self.extras:
            return self.extras["contextual"].run(self.model, batch, device, self._accepts_positions)
        inputs = {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device)}
        if self._accepts_positions:
            inputs["position_ids"] = batch["position_ids"].to(device)
        return self.model(**inputs, use_cache=False).last_hidden_state, None

    def hidden_states(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Final hidden states (B, T, D) of a collated batch; differentiable (used by training)."""
        return self._forward(batch)[0]

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Pooled float32 vectors (B, D) of a collated batch; differentiable (used by training). With the
        extras: states through latent attention before pooling; the contextual state put first (concat)."""
        with self._pooled_tokens(batch):
            states, context = self._forward(batch)  # on the last device of a split (device_map) model
        if "latent_attention" in self.extras:  # the extras sit on the model's first device
            layer = self.extras["latent_attention"]
            states = layer(states.to(next(layer.parameters()).device))
        pooled = pool(states, batch["pool_mask"].to(states.device), self.config.pooling)
        if context is None or self.config.contextual_output == "text":
            return pooled
        context = context.float().to(pooled.device)
        return context if self.config.contextual_output == "context" else torch.cat([context, pooled], -1)

    def _pooled_tokens(self, batch: dict[str, torch.Tensor]):
        """bf16-adaptive picks a batch's precision from how many tokens its shortest text averages (not
        instruction or Echo's first copy, which the attention mask would count too)."""
        switch = getattr(self.model, "length_switch", None)
        if switch is None:
            return contextlib.nullcontext()
        return switch.pooled_tokens(int(batch["pool_mask"].sum(1).min()))

    def encode(
        self,
        texts,
        instruction: str | None = None,
        batch_size: int = 32,
        normalize: bool = False,
        show_progress: bool | None = None,
        max_tokens: int | None = None,
        dimensions: int | None = None,
        precision: str = "float32",
        calibration_embeddings: np.ndarray | None = None,
    ) -> np.ndarray:
        """Embed texts (strings or (instruction, text) pairs) into a float32 array (n, D) in input order.

        `instruction` applies to plain strings; batches are length-sorted and capped at `batch_size`
        rows and (if given) `max_tokens` padded tokens. `dimensions` keeps the first d components
        (Matryoshka; renormalised if `normalize`). `precision` int8 / uint8 / binary / ubinary quantizes
        with sentence-transformers (core/postprocess.py): int8 / uint8 take each dimension's range from
        `calibration_embeddings` (float `encode` output of representative texts), else from this call's
        own vectors; binary / ubinary pack 8 dimensions per byte, (n, d / 8).
        """
        check_dimensions(dimensions, self.embedding_dim)  # before any model work
        check_precision(precision)
        items, single = validate_texts(texts)
        if not items:
            return finish(np.zeros((0, self.embedding_dim), dtype=np.float32), dimensions, normalize, precision)
        items = [(pair_instruction or instruction, text) for pair_instruction, text in items]
        tokenized = self.tokenize(items)
        warn_truncated(tokenized, self.config.max_length)
        show = len(items) >= PROGRESS_MIN_TEXTS if show_progress is None else show_progress
        out = self.encode_tokenized(tokenized, batch_size, normalize and dimensions is None, show, max_tokens)
        if dimensions is not None or precision != "float32":  # cut, then normalise what is kept
            out = finish(out, dimensions, normalize, precision, calibration_embeddings)
        return out[0] if single else out

    def encode_tokenized(self, tokenized: list[TokenizedText], batch_size: int = 32, normalize: bool = False,
                         show_progress: bool = False, max_tokens: int | None = None,
                         inference_mode: bool = True) -> np.ndarray:
        """`encode` for texts tokenized once already (dev evaluation re-encodes the same texts often).
        `inference_mode=False`: plain no_grad, for weights FSDP gathers in training (inference tensors
        made inside inference_mode could not be reused by the next training step)."""
        batches = plan_batches([len(t.ids) for t in tokenized], batch_size, max_tokens)
        out = np.empty((len(tokenized), self.embedding_dim), dtype=np.float32)
        with torch.inference_mode() if inference_mode else torch.no_grad():
            for indices in tqdm(batches, desc="encode", unit="batch", disable=not show_progress):
                vectors = self.embed(self.collate([tokenized[i] for i in indices]))
                if normalize:
                    vectors = torch.nn.functional.normalize(vectors, dim=-1)
                out[indices] = vectors.cpu().numpy()
        return out

    def to_sentence_transformer(self, prompts: dict[str, str] | None = None, default_prompt_name: str | None = None,
                                strict: bool = True):
        """This encoder as a live `sentence_transformers.SentenceTransformer` on the same backbone (no copy):
        same attention, pooling and max length; `prompts` ({"query": instruction}) become named prompts, so
        `encode_query` gives `encode(texts, instruction=...)`. Refuses what it cannot reproduce exactly
        (see lm2vec.export.sentence_transformers; needs the `export` extra)."""
        return CONVERTERS["sentence-transformers"](self, prompts, default_prompt_name, strict)

    # ---- persistence ----------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write weights (safetensors), tokenizer and lm2vec_config.json; atomic (temp dir + rename)."""
        if self.compute_mode:
            raise ValueError(f"this encoder runs in the inference-only compute mode {self.compute_mode!r} (rounded "
                             "weights); load it without that dtype to save it")
        target = Path(directory)
        staging = staging_dir(target)
        try:
            self.model.save_pretrained(staging)
            self.tokenizer.save_pretrained(staging)
            save_extras(self.extras, staging)
            (staging / CONFIG_NAME).write_text(self.config.to_json())
            for hook in SAVE_HOOKS:  # the model card (README.md; a hand-written card is kept)
                hook(staging, self, previous=target)
            replace_dir(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return target

    def fingerprint(self) -> str:
        """Stable hash of the weights and settings: the key for evaluation caches."""
        if self._fingerprint is None:
            settings = {**asdict(self.config), **({"compute_mode": self.compute_mode} if self.compute_mode else {})}
            digest = hashlib.blake2b(json.dumps(settings, sort_keys=True).encode(), digest_size=16)
            extras = {f"lm2vec_extras.{k}": v for k, v in extras_state(self.extras).items()}
            for name, value in sorted({**self.model.state_dict(), **extras}.items()):
                digest.update(name.encode())
                digest.update(tensor_bytes(value))
            self._fingerprint = digest.hexdigest()
        return self._fingerprint


def _version() -> str:
    from lm2vec import __version__

    return __version__




def load_saved_config(path: str) -> EncoderConfig:
    """lm2vec settings saved beside the weights (local or on the hub), else defaults."""
    local = Path(path) / CONFIG_NAME
    if local.is_file():
        return EncoderConfig.load(local)
    if Path(path).is_dir():
        return EncoderConfig()
    from transformers.utils import cached_file

    try:
        remote = cached_file(path, CONFIG_NAME, _raise_exceptions_for_missing_entries=False)
    except OSError:
        remote = None
    return EncoderConfig.load(Path(remote)) if remote else EncoderConfig()
