"""What the export formats share: the output-folder rule, the weights as transformers saves them,
lm2vec's config beside them, and the check that the exported folder reproduces lm2vec's vectors.
"""

from __future__ import annotations

import contextlib
import copy
import json
import shutil
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
from torch import nn

from lm2vec.core.encoder import CONFIG_NAME, Encoder
from lm2vec.io import replace_dir, staging_dir

MIN_COSINE = 0.9999

PROBE_TEXTS = [
    "A man is playing a guitar on the stage.",
    "Stock prices fell sharply in early trading after the report was published.",
    "cats",
    "The committee postponed its decision until the next meeting, citing incomplete data from two regions.",
]


class ExportError(RuntimeError):
    """The exported folder does not reproduce the encoder (and was not written)."""


def check_exportable(encoder: Encoder, fmt: str, live: bool = False) -> None:
    """Refuse, before any work, an encoder whose vectors the format cannot reproduce.

    No format can run the trainable modules beside the backbone (a contextual token's pre-encoder and
    MLP, a latent-attention layer): plain transformers, sentence-transformers and the ONNX / OpenVINO
    graphs hold the backbone alone and would give other vectors. Echo is an input format:
    sentence-transformers (also with the onnx / openvino backends) would embed the text once, so it is
    refused there; the merged folder keeps it in lm2vec_config.json (lm2vec loads it exactly) and warns
    that other readers must write the echo themselves. The on-disk formats save the weights, so an encoder
    in an inference-only compute mode (rounded weights, core/compute.py) is refused as save_pretrained
    refuses it; the `live` sentence-transformers route only wraps the running backbone."""
    c = encoder.config
    extras = [name for name, on in (("contextual", c.contextual), ("latent_attention", c.latent_attention)) if on]
    if fmt != "merged" and c.echo:
        extras.append("echo")
    if extras:
        raise ExportError(f"{' and '.join(extras)} cannot be exported to the {fmt} format: it would give other "
                          "vectors than lm2vec (use the lm2vec folder itself, Encoder.from_pretrained or lm2vec serve)")
    if encoder.compute_mode and not live:
        raise ExportError(f"the encoder runs in the inference-only compute mode {encoder.compute_mode!r} (rounded "
                          f"weights): export the model loaded in float32, then load the export with that dtype")
    if c.echo:
        warnings.warn("an Echo encoder: lm2vec reads echo from lm2vec_config.json, but other readers of the merged "
                      f"folder must build the input {c.echo_template!r} and pool the second copy themselves", stacklevel=3)


def check_output_folder(output: Path, overwrite: bool) -> None:
    """Refuse to replace anything but an empty folder or (with `overwrite`) an earlier export.

    The export swaps in a whole new folder, so every file already in `output` would be deleted:
    never do that to files lm2vec did not write."""
    if not output.exists() or (output.is_dir() and not any(output.iterdir())):
        return
    if not output.is_dir():
        raise ValueError(f"{output} is a file; give a folder to export into")
    if not overwrite:
        raise ValueError(f"{output} already exists and is not empty; pass --overwrite to replace an earlier export")
    if not (output / CONFIG_NAME).is_file():
        raise ValueError(f"{output} holds files that are not an lm2vec export (no {CONFIG_NAME}); exporting there "
                         "would delete them, so choose a new or empty folder")


def plain_model(encoder: Encoder) -> nn.Module:
    """The backbone with any LoRA adapter folded in (peft's merge; the vectors do not change)."""
    model = encoder.model
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
        encoder.model = model
    return model


def serving_tokenizer(encoder: Encoder):
    """A copy of the tokenizer that pads on the right, so the default position ids of a plain forward pass
    (0, 1, ... from the left) are the ones lm2vec gives; the encoder's own tokenizer is left as it is."""
    tokenizer = copy.deepcopy(encoder.tokenizer)
    tokenizer.padding_side = "right"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # padding is masked out; any id will do
    return tokenizer


def save_hf(encoder: Encoder, folder: Path) -> None:
    """Weights + right-padding tokenizer as transformers saves them."""
    plain_model(encoder).save_pretrained(folder)
    serving_tokenizer(encoder).save_pretrained(folder)


def update_json(path: Path, values: dict) -> None:
    """Add or replace top-level keys of a JSON file that a library wrote (keys kept sorted, as transformers does)."""
    path.write_text(json.dumps({**json.loads(path.read_text()), **values}, indent=2, sort_keys=True) + "\n")


def write_lm2vec_config(encoder: Encoder, folder: Path) -> None:
    """lm2vec's settings beside the weights, so `Encoder.from_pretrained(export)` also works."""
    config = replace(encoder.config, padding_side="right")
    (folder / CONFIG_NAME).write_text(config.to_json())


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def check_close(reference: np.ndarray, exported: np.ndarray, what: str) -> float:
    worst = float(cosines(reference, exported).min())
    if not worst >= MIN_COSINE:
        raise ExportError(
            f"{what} gives different vectors from lm2vec (min cosine {worst:.6f} < {MIN_COSINE})"
        )
    return worst


@contextlib.contextmanager
def staged(output: Path):
    """A fresh folder beside `output` (same filesystem, so the final rename is atomic) that replaces `output`
    when the block succeeds and is deleted when it fails: nothing half-written or unverified is left."""
    staging = staging_dir(output, tag="export")
    try:
        yield staging
        replace_dir(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def probe_vectors(encoder: Encoder, batch_size: int = 1) -> np.ndarray:
    """Probe vectors (batch_size 1: no padding; larger: padded batches), without truncation warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return encoder.encode(PROBE_TEXTS, batch_size=batch_size)
