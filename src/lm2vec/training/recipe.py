"""Recipes: validated dataclasses for training, loaded from YAML with `key=value` overrides.

Every field is checked in `__post_init__`, and unknown keys are errors, so a typo in a recipe fails
before any model is loaded. Defaults are the LLM2Vec paper's values (arXiv 2404.05961, appendix);
recipes lower step counts and lengths for CPU.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lm2vec.core.loading import QUANTIZATIONS, check_model_kwargs, redacted
from lm2vec.core.pooling import check_pooling_mode

OBJECTIVE_NAMES = ("mntp", "simcse", "supervised")  # their classes: training/objectives OBJECTIVES
# auto: bf16 where the hardware has bf16 units (CUDA, or a CPU with AVX512-BF16/AMX-BF16), else fp32.
# bf16: frozen base weights stored in bf16 (no per-op casts); LoRA weights, loss and optimiser in float32.
# bf16-autocast / fp16: float32 weights under torch.autocast. no / fp32: float32 throughout.
PRECISIONS = ("auto", "no", "fp32", "bf16", "bf16-autocast", "fp16")
# ddp: every process holds the whole model, gradients all-reduced (DistributedDataParallel);
# fsdp: parameters, gradients and optimiser states sharded over processes (FSDP2 fully_shard).
DISTRIBUTED = ("ddp", "fsdp")

# Per-objective defaults of llm2vec's code (experiments/run_simcse.py, run_supervised.py): SimCSE sets
# attention dropout 0.3 (simcse_dropout) and loss_scale 20; supervised keeps the model's dropout (0 for
# Llama-style decoders) and loss_scale 50.
PAPER_DEFAULTS = {"simcse": {"attention_dropout": 0.3, "scale": 20.0},
                  "supervised": {"attention_dropout": 0.0, "scale": 50.0}}

BUILTIN_RECIPES = Path(__file__).resolve().parents[1] / "recipes"


class RecipeError(ValueError):
    """A recipe has an unknown key or a bad value."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise RecipeError(message)


@dataclass
class LoraSettings:
    """LoRA on every attention and MLP projection (LLM2Vec: r=16, alpha=32, dropout 0.05)."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"

    def __post_init__(self) -> None:
        _check(self.r >= 1 and self.alpha > 0, f"lora.r must be >= 1 and lora.alpha > 0, got {self.r}, {self.alpha}")
        _check(0.0 <= self.dropout < 1.0, f"lora.dropout must be in [0, 1), got {self.dropout}")


@dataclass
class StageConfig:
    """One training stage: an objective, its data and its optimisation settings."""

    objective: str
    data: str | list[str]
    name: str = ""
    max_steps: int = 1000
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 5e-5
    weight_decay: float = 0.0
    warmup_steps: int = 0
    max_length: int = 128
    lora: LoraSettings = field(default_factory=LoraSettings)
    # lora: train LoRA adapters (LLM2Vec); full: train every weight but the input embeddings (a small
    # model's weights and AdamW states fit in memory; float32 master weights, bf16 autocast where it pays)
    finetune: str = "lora"
    merge: bool = True  # merge the adapter into the weights before the next stage (LLM2Vec does for MNTP)
    # MNTP
    mask_rate: float = 0.2
    mask_strategy: str = "80-10-10"
    mask_token: str = "_"
    # SimCSE / supervised. None: the paper's value for the objective (llm2vec's code): SimCSE attention
    # dropout 0.3 and scale 20 (temperature 0.05); supervised no extra dropout and scale 50 (loss_scale)
    attention_dropout: float | None = None
    hidden_dropout: float | None = None
    scale: float | None = None  # 1 / temperature
    mini_batch_size: int | None = None  # GradCache: embed the batch this many rows at a time (memory bound)
    # Matryoshka (objectives/matryoshka.py): the loss is the weighted sum of the contrastive loss on the
    # first d components of every vector, for each d (e.g. [64, 128, 256, 576]); weights default to 1 each
    matryoshka_dims: list[int] | None = None
    matryoshka_weights: list[float] | None = None
    mask_duplicates: bool = True  # supervised: a repeat of a query's positive text is no negative for it
    instruction: str | None = None  # supervised: for queries without their own; simcse: on every text
    symmetric: bool = False  # supervised: instruction on both sides
    use_instructions: bool = True  # supervised: false trains plain text on both sides (SBERT / SimCSE style)
    data_limit: int | None = None
    text_unit: str = "line"  # line | paragraph | sentence: what one training text is (builtin corpora: paragraph)
    pack: bool = True  # MNTP: concatenate texts and cut the stream into full max_length blocks (no padding)
    group_by_length: bool = True  # SimCSE / supervised: batches of texts of similar length (less padding)
    # evaluation while training: Spearman on a scored-pair dev file (never a split a benchmark scores)
    eval_every: int = 0  # steps between dev evaluations (0: off); also evaluated before the first step
    eval_data: str | None = None  # e.g. ../shared/data/sts/STSBenchmark/sts-dev.csv, or JSONL sentence1/2, score
    eval_limit: int | None = 500  # dev pairs used (a fixed seeded sample); None: all
    eval_instruction: str | None = None  # instruction put on both sides of each dev pair
    keep_best: bool = False  # end the stage with the weights of the best dev score, not the last step
    # attention goes from causal to bidirectional over this stage's first N steps (future tokens weighted
    # 0 -> 1; see core/soft_bidirectional.py); 0: bidirectional from the first step, as in the paper
    bidirectional_anneal_steps: int = 0
    # loop
    gradient_checkpointing: bool = False
    precision: str = "auto"
    save_every: int = 100
    keep_checkpoints: int = 2
    seed: int = 42

    def __post_init__(self) -> None:
        self.name = self.name or self.objective
        paper = PAPER_DEFAULTS.get(self.objective, {})
        for key in ("attention_dropout", "scale"):
            if getattr(self, key) is None:
                setattr(self, key, paper.get(key, 0.0 if key == "attention_dropout" else 20.0))
        if isinstance(self.lora, dict):
            self.lora = _build(LoraSettings, self.lora, f"stage {self.name!r}: lora")
        _check(self.objective in OBJECTIVE_NAMES, f"objective must be one of {OBJECTIVE_NAMES}, got {self.objective!r}")
        _check(bool(self.data), f"stage {self.name!r}: data is required")
        for key in ("max_steps", "batch_size", "grad_accum", "max_length", "save_every", "keep_checkpoints"):
            _check(getattr(self, key) >= 1, f"stage {self.name!r}: {key} must be >= 1, got {getattr(self, key)}")
        _check(self.merge, f"stage {self.name!r}: merge: false is not supported: every stage's adapter is merged "
               "into the weights before the next stage starts (as LLM2Vec does); remove the key")
        _check(self.lr > 0, f"stage {self.name!r}: lr must be > 0, got {self.lr}")
        _check(0 <= self.warmup_steps <= self.max_steps, f"stage {self.name!r}: warmup_steps must be in [0, max_steps]")
        _check(0 < self.mask_rate < 1, f"stage {self.name!r}: mask_rate must be in (0, 1), got {self.mask_rate}")
        _check(self.mask_strategy in ("80-10-10", "all-mask"), f"stage {self.name!r}: bad mask_strategy")
        _check(0 <= self.attention_dropout < 1, f"stage {self.name!r}: attention_dropout must be in [0, 1)")
        _check(self.precision in PRECISIONS, f"stage {self.name!r}: precision must be one of {PRECISIONS}")
        _check(self.finetune in ("lora", "full"), f"stage {self.name!r}: finetune must be 'lora' or 'full', "
               f"got {self.finetune!r}")
        _check(self.scale > 0, f"stage {self.name!r}: scale must be > 0")
        _check(self.text_unit in ("line", "paragraph", "sentence"), f"stage {self.name!r}: bad text_unit")
        _check(self.objective != "simcse" or self.batch_size >= 2, "simcse needs batch_size >= 2 (in-batch negatives)")
        contrastive = self.objective in ("simcse", "supervised")
        _check(not (contrastive and self.grad_accum > 1),
               f"stage {self.name!r}: grad_accum does not enlarge the pool of in-batch negatives of a contrastive "
               "loss (each micro-batch would get its own); set batch_size to the contrastive batch and "
               "mini_batch_size to what fits in memory (GradCache)")
        _check(self.mini_batch_size is None or (contrastive and 1 <= self.mini_batch_size <= self.batch_size),
               f"stage {self.name!r}: mini_batch_size needs a contrastive objective and 1 <= mini_batch_size "
               f"<= batch_size, got {self.mini_batch_size}")
        self._check_matryoshka(contrastive)
        _check(self.eval_every >= 0, f"stage {self.name!r}: eval_every must be >= 0, got {self.eval_every}")
        _check(not self.eval_every or bool(self.eval_data), f"stage {self.name!r}: eval_every needs eval_data")
        _check(not self.keep_best or self.eval_every > 0, f"stage {self.name!r}: keep_best needs eval_every > 0")
        _check(self.eval_limit is None or self.eval_limit >= 2, f"stage {self.name!r}: eval_limit must be >= 2")
        _check(0 <= self.bidirectional_anneal_steps <= self.max_steps,
               f"stage {self.name!r}: bidirectional_anneal_steps must be in [0, max_steps] (the stage must end "
               f"fully bidirectional), got {self.bidirectional_anneal_steps}")

    def _check_matryoshka(self, contrastive: bool) -> None:
        """Dims and weights on their own; dims above the model's width are refused once the model is known
        (objectives/matryoshka.py `Nesting.for_stage`)."""
        dims, weights, where = self.matryoshka_dims, self.matryoshka_weights, f"stage {self.name!r}"
        _check(weights is None or dims is not None, f"{where}: matryoshka_weights needs matryoshka_dims")
        if dims is None:
            return
        _check(contrastive, f"{where}: matryoshka_dims needs a contrastive objective (simcse or supervised), "
               f"not {self.objective!r}")
        _check(bool(dims) and all(d >= 1 for d in dims),
               f"{where}: matryoshka_dims must be a non-empty list of dimensions >= 1, got {dims}")
        _check(len(set(dims)) == len(dims), f"{where}: matryoshka_dims repeats a dimension: {dims}")
        _check(weights is None or (len(weights) == len(dims) and all(w > 0 for w in weights)),
               f"{where}: matryoshka_weights must be one weight > 0 per dimension of matryoshka_dims "
               f"({len(dims)}), got {weights}")


@dataclass
class Recipe:
    """A whole run: the model, the encoder's settings and the stages in order."""

    stages: list[StageConfig]
    name: str = "recipe"
    model: str = "smollm2-135m"
    pooling: str = "mean"
    max_length: int = 512
    bidirectional: bool = True
    # further EncoderConfig settings of every stage's encoder, e.g. {echo: true}, {latent_attention: true},
    # {contextual: all-minilm-l6-v2}: their trainable modules train with LoRA in the contrastive stages
    encoder: dict = field(default_factory=dict)
    # from_pretrained keyword arguments for every load of the model (attn_implementation, revision, token, ...)
    model_kwargs: dict = field(default_factory=dict)
    quantization: str | None = None  # 8bit | 4bit: frozen base through bitsandbytes (QLoRA); LoRA stays float32
    distributed: str = "ddp"  # ddp | fsdp, under torchrun / accelerate launch (one process: neither)

    def __post_init__(self) -> None:
        _check(isinstance(self.stages, list) and self.stages, "a recipe needs a non-empty list of stages")
        self.stages = [s if isinstance(s, StageConfig) else _build(StageConfig, s, _stage_label(s, i))
                       for i, s in enumerate(self.stages)]
        check_pooling_mode(self.pooling)
        names = [s.name for s in self.stages]
        _check(len(set(names)) == len(names), f"stage names must be unique, got {names}")
        annealed = [s.name for s in self.stages if s.bidirectional_anneal_steps]
        _check(self.bidirectional or not annealed,
               f"stage {annealed[0] if annealed else ''!r}: bidirectional_anneal_steps needs bidirectional: true")
        self._check_encoder()
        self._check_loading()

    def _check_encoder(self) -> None:
        """`encoder:` holds EncoderConfig settings other than the recipe's own keys, valid together."""
        from lm2vec.core.encoder import EncoderConfig

        own = sorted(set(self.encoder) & {"pooling", "bidirectional", "max_length", "base_model", "training"})
        _check(not own, f"encoder: {own} are set by the recipe itself (top-level keys or training), not under encoder:")
        known = {f.name for f in dataclasses.fields(EncoderConfig)}
        unknown = sorted(set(self.encoder) - known)
        _check(not unknown, f"encoder: unknown keys {unknown}; known: {', '.join(sorted(known - {'training'}))}")
        try:
            EncoderConfig(**self.encoder)
        except ValueError as error:
            raise RecipeError(f"encoder: {error}") from None
        mntp = [s.name for s in self.stages if s.objective == "mntp"]
        _check(not (self.encoder.get("contextual") and mntp), f"stage {mntp[0] if mntp else ''!r}: a contextual "
               "token trains with a contrastive objective (simcse, supervised); MNTP does not support it")

    def _check_loading(self) -> None:
        """model_kwargs, quantization and the multi-process engine, and what they cannot be combined with."""
        try:
            self.model_kwargs = check_model_kwargs(self.model_kwargs, "model_kwargs")
        except ValueError as error:
            raise RecipeError(str(error)) from None
        for key, instead in (("dtype", "each stage's precision"), ("torch_dtype", "each stage's precision"),
                             ("quantization_config", "the recipe's quantization: 8bit | 4bit")):
            _check(key not in self.model_kwargs, f"model_kwargs: {key} is set by {instead}; remove it")
        _check(self.quantization in (None, *QUANTIZATIONS),
               f"quantization must be one of {QUANTIZATIONS} or null, got {self.quantization!r}")
        _check(self.distributed in DISTRIBUTED, f"distributed must be one of {DISTRIBUTED}, got {self.distributed!r}")
        _check(not (self.quantization and any(s.finetune == "full" for s in self.stages)),
               "finetune: full trains every weight, which 8-bit / 4-bit weights cannot; use LoRA with quantization")
        if self.distributed == "fsdp":
            _check(self.quantization is None, "distributed: fsdp does not shard bitsandbytes weights; use ddp")
            extras = [k for k in ("latent_attention", "contextual") if self.encoder.get(k)]
            _check(not extras, f"distributed: fsdp shards the backbone only, not the encoder's extra modules "
                   f"({', '.join(extras)}); train them with distributed: ddp")
            for stage in self.stages:
                _check(not stage.keep_best, f"stage {stage.name!r}: keep_best is not supported with distributed: fsdp")
                _check(stage.precision != "fp16", f"stage {stage.name!r}: precision fp16 needs a gradient scaler "
                       "FSDP does not share; use bf16 with distributed: fsdp")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _stage_label(data: Any, index: int) -> str:
    """How errors name a stage: by its name (or objective) as the recipe and overrides call it."""
    name = data.get("name") or data.get("objective") if isinstance(data, dict) else None
    return f"stage {name!r}" if isinstance(name, str) and name else f"stages[{index}]"


def _type_ok(value: Any, hint: Any) -> bool:
    """Whether a YAML value fits a field's annotation (bool is not a number here)."""
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        return any(_type_ok(value, arg) for arg in typing.get_args(hint))
    if typing.get_origin(hint) is list:
        return isinstance(value, list) and all(_type_ok(v, typing.get_args(hint)[0]) for v in value)
    if hint is type(None):
        return value is None
    if hint in (int, float):
        return isinstance(value, int if hint is int else (int, float)) and not isinstance(value, bool)
    if dataclasses.is_dataclass(hint):
        return isinstance(value, (dict, hint))
    return isinstance(value, hint) if isinstance(hint, type) else True


def _describe(hint: Any) -> str:
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null",
             dict: "a mapping"}
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        return " or ".join(_describe(arg) for arg in typing.get_args(hint))
    if typing.get_origin(hint) is list:
        return f"a list of {_describe(typing.get_args(hint)[0]).split(' ', 1)[-1]}s"
    return names.get(hint, "a mapping" if dataclasses.is_dataclass(hint) else str(hint))


def _coerce(value: Any, hint: Any) -> Any:
    """'5e-4' is a string to YAML 1.1 (no dot); read it as the number the user meant."""
    if isinstance(value, str) and float in (hint, *typing.get_args(hint)):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _typed(cls, data: dict, where: str) -> dict:
    """`data` with numbers coerced, after checking every value against the field's type."""
    hints = typing.get_type_hints(cls)
    out = {}
    for key, value in data.items():
        out[key] = _coerce(value, hints[key])
        _check(_type_ok(out[key], hints[key]), f"{where}: {key} must be {_describe(hints[key])}, got {value!r}")
    return out


def _build(cls, data: Any, where: str):
    """Instantiate a config dataclass from a mapping, naming unknown keys, bad types and their location."""
    _check(isinstance(data, dict), f"{where} must be a mapping, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    for key in sorted(set(data) - known):
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(sorted(known))}"
        raise RecipeError(f"{where}: unknown key {key!r}; {hint}")
    try:
        return cls(**_typed(cls, data, where))
    except TypeError as error:  # a required key is missing
        raise RecipeError(f"{where}: {error}") from None


def _parse_value(text: str) -> Any:
    """A command-line value as YAML would read it (numbers, booleans, lists, null)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_override(data: dict, assignment: str) -> None:
    """Apply `a.b.c=value` to raw recipe data; a stage is addressed by its name or index."""
    _check("=" in assignment, f"override {assignment!r} must look like key=value")
    path, value = assignment.split("=", 1)
    keys = path.strip().split(".")
    stage_names = [s.get("name", s.get("objective")) for s in data.get("stages", []) if isinstance(s, dict)]
    if len(keys) > 1 and keys[0] in stage_names:  # `mntp.max_steps=10` is short for `stages.mntp.max_steps=10`
        keys = ["stages"] + keys
    node: Any = data
    for key in keys[:-1]:
        if isinstance(node, list):
            matches = [s for i, s in enumerate(node) if s.get("name", s.get("objective")) == key or str(i) == key]
            _check(len(matches) == 1, f"override {assignment!r}: no single stage named {key!r}")
            node = matches[0]
        else:
            node = node.setdefault(key, {})
    _check(isinstance(node, dict), f"override {assignment!r} does not name a setting")
    node[keys[-1]] = _parse_value(value)


def builtin_recipes() -> dict[str, Path]:
    """The recipes that ship inside the package (src/lm2vec/recipes), by name."""
    return {p.stem: p for p in sorted(BUILTIN_RECIPES.glob("*.yaml"))}


def find_recipe(spec: str | Path) -> Path:
    """A recipe file: `spec` itself if it is a file, else the built-in recipe of that name
    (`llm2vec-unsupervised`, also written `llm2vec-unsupervised.yaml` or `recipes/llm2vec-unsupervised.yaml`)."""
    path = Path(spec)
    if path.is_file():
        return path
    shipped = builtin_recipes()
    name = path.name.removesuffix(".yaml").removesuffix(".yml")
    if name in shipped and (path.parent == Path(".") or path.parent.name == "recipes"):
        return shipped[name]
    raise RecipeError(f"recipe not found: {spec} (neither a file nor a built-in recipe; built-in: {', '.join(shipped)})")


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    """Read a YAML recipe (a file or a built-in name), apply overrides (`stages.mntp.max_steps=10`,
    `model=...`), validate it."""
    path = find_recipe(path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:  # one line: where and what, not PyYAML's multi-line report
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise RecipeError(f"{path} is not valid YAML{where}: {getattr(error, 'problem', None) or error}") from None
    _check(isinstance(data, dict), f"{path}: a recipe must be a mapping with a 'stages' list")
    for assignment in overrides:
        apply_override(data, assignment)
    return _build(Recipe, data, str(path))


def dump_recipe(recipe: Recipe, path: str | Path) -> None:
    """Write the resolved recipe next to the outputs, so a run can be reproduced exactly (hub token left out)."""
    data = {**recipe.to_dict(), "model_kwargs": redacted(recipe.model_kwargs)}
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False))
