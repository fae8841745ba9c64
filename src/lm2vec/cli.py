"""The `lm2vec` command line. Commands only parse arguments and call the library."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from lm2vec.cli_demo import demo_table, verdict, worst_ranking
from lm2vec.cli_errors import exit_with
from lm2vec.core.models import DEFAULT_MODEL

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Turn decoder LLMs into text encoders.")
console = Console()
_verdict = verdict  # the names tests and older scripts import from here
__all__ = ["app", "main", "worst_ranking"]
DEVICE_HELP = "cpu, cuda, cuda:1, mps, ... (default: cuda when available, else cpu)"
MODEL_HELP = "built-in name (smollm2-135m, gemma3-270m), local model folder or hub id"
KWARGS_HELP = ("JSON object of from_pretrained arguments, e.g. '{\"attn_implementation\": \"eager\", "
               "\"revision\": \"main\"}' (also token, device_map, dtype)")
DTYPE_HELP = ("float32 | bfloat16 | float16 | bf16-matmul (fast on CPUs with AMX/AVX512-BF16, close to float32) | "
              "bf16-adaptive (bf16 matmuls for long texts, float32 for short ones; mean pooling) | int8-dynamic (default: float32 on CPU, bfloat16 on CUDA; docs/performance.md)")


@app.callback()
def options(debug: bool = typer.Option(False, "--debug", help="show the full traceback when something fails "
                                       "(also LM2VEC_DEBUG=1)")) -> None:
    """Turn decoder LLMs into text encoders: train (LLM2Vec), evaluate (MTEB, probes), encode, serve, export."""


def _index_path(output: Path) -> Path:
    return output.with_name(output.name.removesuffix(".npy") + ".rows.npy")


def _model_kwargs(text: str | None) -> dict:
    """--model-kwargs as keyword arguments, or a usage error naming the option."""
    from lm2vec.core.loading import parse_model_kwargs

    try:
        return parse_model_kwargs(text)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--model-kwargs") from None


def _check_output(output: Path, overwrite: bool) -> None:
    """Before any model loads: never replace a finished output unless asked."""
    if output.is_dir():
        raise typer.BadParameter(f"{output} is a folder; give a .npy file", param_hint="--output")
    if output.exists() and not overwrite:
        raise typer.BadParameter(f"{output} exists; pass --overwrite to replace it", param_hint="--output")


def _check_precision(precision: str) -> None:
    """Before any model loads: a known precision, and sentence-transformers if it quantizes."""
    from lm2vec.core.postprocess import check_precision, quantizer

    try:
        check_precision(precision)
        if precision != "float32":
            quantizer(precision)
    except (ValueError, ImportError) as error:
        raise typer.BadParameter(str(error), param_hint="--precision") from None


@app.command()
def encode(
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help=MODEL_HELP),
    input: Path = typer.Option(..., "--input", "-i", exists=True, dir_okay=False,
                               help=".txt (one text per line), .jsonl, .csv or .tsv"),
    output: Path = typer.Option(..., "--output", "-o", help="where to write the (n, D) .npy (float32 unless "
                                "--precision says otherwise)"),
    instruction: str = typer.Option(None, help="instruction applied to every text (attended, not pooled)"),
    column: str = typer.Option("text", help="text field for .jsonl/.csv/.tsv inputs"),
    pooling: str = typer.Option(None, help="mean | weighted_mean | last | first (default: the model's)"),
    batch_size: int = typer.Option(32, min=1, help="most texts per forward pass"),
    max_tokens: int = typer.Option(None, min=1, help="most padded tokens per forward pass (default: no cap)"),
    max_length: int = typer.Option(None, min=1, help="tokens per text; longer texts are cut, with a warning "
                                   "(default: the model's)"),
    normalize: bool = typer.Option(False, help="L2-normalise the vectors"),
    dimensions: int = typer.Option(None, min=1, help="keep the first d components (Matryoshka), renormalised "
                                   "with --normalize (default: all)"),
    precision: str = typer.Option("float32", help="float32 | int8 | uint8 | binary | ubinary (needs "
                                  "sentence-transformers); int8/uint8 ranges come from the whole input, "
                                  "binary/ubinary pack 8 dimensions per byte"),
    skip_empty: bool = typer.Option(False, help="leave out rows without text instead of failing, and write "
                                    "<output>.rows.npy: the input row of each vector"),
    overwrite: bool = typer.Option(False, help="replace an existing output file"),
    shard_size: int = typer.Option(None, min=1, help="texts per resumable shard in <output>.shards/ "
                                   "(default: one batch, so an interruption loses at most one batch)"),
    keep_shards: bool = typer.Option(False, help="keep <output>.shards/ after merging"),
    device: str = typer.Option(None, help=DEVICE_HELP),
    dtype: str = typer.Option(None, help=DTYPE_HELP),
    model_kwargs: str = typer.Option(None, help=KWARGS_HELP),
    engine: str = typer.Option("local", help="local: this process (or those torchrun started) | ray: Ray Data "
                               "actors, one model each, on a GPU each when there are GPUs (pip install 'lm2vec[ray]')"),
    ray_address: str = typer.Option(None, help="--engine ray: the cluster to use (auto, ray://head:10001); "
                                    "default: a local Ray started and stopped by this command"),
    ray_workers: int = typer.Option(None, min=1, help="--engine ray: model replicas (default: one per GPU, else 1)"),
) -> None:
    """Embed every row of a file and save the vectors as .npy: row i of the input is vector i.

    Work is saved shard by shard, so re-running an interrupted command skips finished shards. Under
    `torchrun --nproc_per_node N` the shards are spread over N processes and rank 0 merges them; with
    `--engine ray` over Ray Data actors (the same shards: either engine resumes the other's work).
    """
    import numpy as np

    from lm2vec.core.distributed import init_distributed, process_device, shutdown
    from lm2vec.core.postprocess import quantize
    from lm2vec.core.sharded import encode_sharded
    from lm2vec.data.inputs import read_input_rows
    from lm2vec.io import save_npy_atomic

    _check_output(output, overwrite)
    _check_precision(precision)
    if engine not in ("local", "ray"):
        raise typer.BadParameter(f"{engine!r}: choose local or ray", param_hint="--engine")
    load = {"pooling": pooling, "max_length": max_length, "dtype": dtype, "model_kwargs": _model_kwargs(model_kwargs)}
    rank, world = init_distributed()
    if engine == "ray" and world > 1:
        raise typer.BadParameter("ray starts its own workers; run it as one process, not under torchrun",
                                 param_hint="--engine")
    if device is None and world > 1:
        device = process_device()
    rows = read_input_rows(input, column, skip_empty)
    if not rows.texts:
        raise typer.BadParameter(f"{input} holds no texts", param_hint="--input")
    options = {"instruction": instruction, "batch_size": batch_size, "max_tokens": max_tokens, "normalize": normalize,
               "dimensions": dimensions}
    if engine == "ray":
        vectors = _encode_on_ray(model, load, rows.texts, output, shard_size or batch_size, keep_shards, device,
                                 ray_address, ray_workers, options)
    else:
        from lm2vec.core.encoder import Encoder

        encoder = Encoder.from_pretrained(model, device=device, **load)
        vectors = encode_sharded(encoder, rows.texts, output, shard_size=shard_size, rank=rank, world=world,
                                 keep_shards=keep_shards, show_progress=rank == 0, **options)
    if vectors is not None and precision != "float32":  # after the merge: one set of ranges for every row
        vectors = quantize(np.asarray(vectors), precision)
        save_npy_atomic(output, vectors)
    if vectors is not None:
        if skip_empty:
            save_npy_atomic(_index_path(output), np.asarray(rows.rows, dtype=np.int64))
        skipped = f"; skipped {len(rows.skipped)} empty rows, input rows in {_index_path(output)}" if skip_empty else ""
        kind = "" if precision == "float32" else f" {precision} ({vectors.dtype})"
        console.print(f"wrote {vectors.shape[0]} x {vectors.shape[1]}{kind} vectors to {output}"
                      + (f" ({world} processes)" if world > 1 else "") + skipped)
    shutdown(world)


def _encode_on_ray(model: str, load: dict, texts: list, output: Path, shard_size: int, keep_shards: bool,
                   device: str | None, address: str | None, workers: int | None, options: dict):
    """`encode --engine ray`: `--device cpu` keeps the actors off GPUs, `--device cuda` gives each one."""
    from lm2vec.core.ray_encode import ModelSpec, RayOptions, encode_with_ray

    gpus = None if device is None else (0.0 if device == "cpu" else 1.0)
    ray_options = RayOptions(address=address, workers=workers, gpus_per_worker=gpus)
    return encode_with_ray(ModelSpec(model, load), texts, output, shard_size=shard_size, options=ray_options,
                           keep_shards=keep_shards, show_progress=True, **options)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": False})
def train(
    ctx: typer.Context,
    recipe: str = typer.Argument(..., help="YAML recipe file, or a built-in recipe: llm2vec-unsupervised, "
                                 "llm2vec-supervised, annealed-simcse, uni-simcse, demo"),
    model: str = typer.Option(None, "--model", "-m", help="override the recipe's model"),
    output: Path = typer.Option(Path("runs/latest"), "--output", "-o", help="run directory"),
    resume: bool = typer.Option(False, help="continue from the last complete checkpoint in OUTPUT"),
    device: str = typer.Option(None, help=DEVICE_HELP),
    model_kwargs: str = typer.Option(None, help=KWARGS_HELP + "; merged into the recipe's model_kwargs"),
) -> None:
    """Run every stage of RECIPE; extra arguments are key=value overrides (e.g. mntp.max_steps=10).

    Multi-process: `torchrun --nproc_per_node N -m lm2vec.cli train ...` or `accelerate launch
    --multi_gpu --num_processes N -m lm2vec.cli train ...`; DDP, or FSDP with `distributed=fsdp`
    (docs/training.md)."""
    import json
    import os

    from lm2vec.core.distributed import shutdown
    from lm2vec.training.loop import train as run_training
    from lm2vec.training.recipe import load_recipe

    extra = [f"model_kwargs.{key}={json.dumps(value)}" for key, value in _model_kwargs(model_kwargs).items()]
    overrides = list(ctx.args) + ([f"model={model}"] if model else []) + extra
    loaded = load_recipe(recipe, overrides)
    final = run_training(loaded, output, resume=resume, device=device)
    if os.environ.get("RANK", "0") == "0":
        console.print(f"encoder ready: {final}  (Encoder.from_pretrained({str(final)!r}))")
    shutdown(int(os.environ.get("WORLD_SIZE", "1")))


@app.command()
def info(model: str = typer.Argument(DEFAULT_MODEL, help=MODEL_HELP),
         model_kwargs: str = typer.Option(None, help=KWARGS_HELP)) -> None:
    """Architecture, size and whether bidirectional attention really works for MODEL."""
    from lm2vec.core.bidirectional import BidirectionalError, make_bidirectional
    from lm2vec.core.encoder import Encoder

    encoder = Encoder.from_pretrained(model, bidirectional=False, model_kwargs=_model_kwargs(model_kwargs))
    config = encoder.model.config.get_text_config()
    try:
        make_bidirectional(encoder.model)
        check = "[green]passes[/green] (a late token changes the first token's state)"
    except BidirectionalError as error:
        check = f"[red]fails[/red]: {error}"
    table = Table(show_header=False)
    rows = [
        ("model", model),
        ("architecture", ", ".join(encoder.model.config.architectures or [type(encoder.model).__name__])),
        ("model_type", config.model_type),
        ("parameters", f"{sum(p.numel() for p in encoder.model.parameters()):,}"),
        ("layers / hidden / vocab", f"{config.num_hidden_layers} / {config.hidden_size} / {config.vocab_size}"),
        ("attention implementation", str(encoder.model.config._attn_implementation)),
        ("bidirectional check", check),
        ("pooling / max_length", f"{encoder.config.pooling} / {encoder.config.max_length}"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)


@app.command("eval")
def evaluate(
    model: str = typer.Argument(DEFAULT_MODEL, help=MODEL_HELP),
    tasks: str = typer.Option("STSBenchmark", help="comma-separated MTEB task names"),
    data_dir: Path = typer.Option(None, help="local data pack (offline); without it mteb downloads from the hub"),
    output: Path = typer.Option(Path("results"), "--output", "-o", help="results JSON and embedding cache"),
    instructions: Path = typer.Option(None, help="JSON {task: instruction} overriding LLM2Vec's defaults"),
    batch_size: int = typer.Option(32, min=1, help="texts per forward pass"),
    limit: int = typer.Option(None, min=1, help="sample each local evaluation split to at most N rows"),
    pooling: str = typer.Option(None, help="mean | weighted_mean | last | first (default: the model's)"),
    bidirectional: bool = typer.Option(None, "--bidirectional/--causal", help="default: the model's setting"),
    device: str = typer.Option(None, help=DEVICE_HELP),
    model_kwargs: str = typer.Option(None, help=KWARGS_HELP),
) -> None:
    """Run MTEB tasks with mteb's own evaluators (offline with --data-dir) and print the main scores."""
    from lm2vec.core.encoder import Encoder
    from lm2vec.eval.mteb import check_task_names
    from lm2vec.eval.mteb import evaluate as run_mteb

    names = [t.strip() for t in tasks.split(",") if t.strip()]
    check_task_names(names, data_dir)  # before the model loads
    encoder = Encoder.from_pretrained(model, pooling=pooling, bidirectional=bidirectional, device=device,
                                      model_kwargs=_model_kwargs(model_kwargs))
    run_mteb(encoder, names, data_dir=data_dir, output_dir=output, instructions_file=instructions,
             batch_size=batch_size, limit=limit)


@app.command()
def probe(
    model: str = typer.Argument(DEFAULT_MODEL, help=MODEL_HELP),
    task: str = typer.Option("conll2003-ner", help="comma-separated: conll2003-pos, conll2003-chunk, conll2003-ner, "
                             "conll2000-chunk"),
    data_dir: Path = typer.Option(..., help="data pack holding word/CoNLL-2003 and word/CoNLL-2000"),
    output: Path = typer.Option(Path("results"), "--output", "-o", help="probe_results.json and feature cache"),
    train_limit: int = typer.Option(None, min=1, help="seeded sample of N training sentences"),
    test_limit: int = typer.Option(None, min=1, help="seeded sample of N test sentences"),
    pooling: str = typer.Option("first", help="word vector: first | mean of its sub-tokens"),
    shift: bool = typer.Option(False, "--shift/--no-shift", help="read token i from position i-1, the paper's "
                               "read-out after MNTP (off by default: measured better unshifted, see README)"),
    bidirectional: bool = typer.Option(None, "--bidirectional/--causal", help="default: the model's setting"),
    batch_size: int = typer.Option(32, min=1, help="sentences per forward pass"),
    device: str = typer.Option(None, help=DEVICE_HELP),
    model_kwargs: str = typer.Option(None, help=KWARGS_HELP),
) -> None:
    """Word-level linear probes on frozen token states (LLM2Vec §3.2): accuracy, entity/chunk F1."""
    from lm2vec.core.encoder import Encoder
    from lm2vec.eval.probes import ProbeSettings, check_tasks, print_table, probe_tasks

    names = [t.strip() for t in task.split(",") if t.strip()]
    settings = ProbeSettings(pooling, shift, train_limit, test_limit, batch_size=batch_size)
    check_tasks(names, data_dir)  # before the model loads
    encoder = Encoder.from_pretrained(model, bidirectional=bidirectional, device=device,
                                      model_kwargs=_model_kwargs(model_kwargs))
    results = probe_tasks(encoder, names, data_dir, settings, cache_dir=output / "embedding_cache", output_dir=output,
                          show_progress=True)
    print_table(results, title=f"word-level probes: {model}")


@app.command()
def demo(
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help=MODEL_HELP),
    recipe: Path = typer.Option(Path(__file__).parent / "recipes" / "demo.yaml", help="short training recipe"),
    output: Path = typer.Option(Path("runs/demo"), "--output", "-o", help="run directory (a re-run resumes)"),
    train: bool = typer.Option(True, help="train the short recipe between the two tables"),
) -> None:
    """The main job on the built-in model: similarities before, a short training run, similarities after.

    Pairs (0,1), (2,3), (4,5) are paraphrases; the paraphrase gap is their mean cosine minus the mean
    cosine of unrelated pairs. A re-run resumes the training where it stopped.
    """
    import time

    from lm2vec.training.loop import train as run_training
    from lm2vec.training.recipe import load_recipe

    loaded = load_recipe(recipe, [f"model={model}"])
    attention = "bidirectional" if loaded.bidirectional else "causal"
    started = time.monotonic()
    before, _ = demo_table(console, model, f"{model}, {attention}, no training", bidirectional=loaded.bidirectional,
                            pooling=loaded.pooling)
    timings = [("model and table before", time.monotonic() - started)]
    if train:
        steps = ", ".join(f"{s.name} {s.max_steps} steps x {s.batch_size}" for s in loaded.stages)
        console.print(f"training {loaded.name} ({attention}; {steps}) into {output}: a few CPU minutes")
        final = run_training(loaded, output, resume=True)
        timings.append(("training", time.monotonic() - started - sum(t for _, t in timings)))
        after, vectors = demo_table(console, str(final), f"after {loaded.name}")
        timings.append(("table after", time.monotonic() - started - sum(t for _, t in timings)))
        console.print(f"paraphrase gap: {before:+.3f} before, {after:+.3f} after training (loss curves: "
                      f"{output}/*/loss.png)")
        console.print(verdict(vectors))
    console.print("took " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in timings)
                  + f"; {time.monotonic() - started:.0f} s in all")


@app.command()
def serve(
    model: str = typer.Argument(DEFAULT_MODEL, help=MODEL_HELP),
    host: str = typer.Option("127.0.0.1", help="interface to bind (0.0.0.0 exposes it to the network)"),
    port: int = typer.Option(8080, min=1, max=65535, help="TCP port to listen on"),
    api_key: str = typer.Option(None, envvar="LM2VEC_API_KEY", help="require 'Authorization: Bearer KEY'"),
    served_model_name: str = typer.Option(None, help="name returned in responses (default: MODEL's name)"),
    max_batch_size: int = typer.Option(32, min=1, help="rows per forward pass; 1 disables batching"),
    max_batch_tokens: int = typer.Option(8192, min=1, help="padded tokens per forward pass"),
    merge_requests: bool = typer.Option(True, help="merge concurrent requests into shared batches"),
    max_wait_ms: float = typer.Option(2.0, min=0, help="wait this long for companions before a batch"),
    max_queue: int = typer.Option(4096, min=1, help="inputs waiting before new requests get 503"),
    max_inputs: int = typer.Option(512, min=1, help="inputs per request"),
    max_length: int = typer.Option(None, min=1, help="tokens per input (default: the model's)"),
    truncate: bool = typer.Option(False, help="cut over-long inputs instead of refusing them with 400"),
    max_body_mb: float = typer.Option(8.0, min=0.001, help="request body limit, MiB"),
    timeout: float = typer.Option(60.0, min=0.001, help="per-request timeout, seconds (504)"),
    drain_seconds: float = typer.Option(2.0, min=0, help="after SIGTERM, keep the socket open this long, "
                                        "answering new requests with 503 shutting_down"),
    normalize: bool = typer.Option(True, help="unit-length vectors, as OpenAI returns"),
    device: str = typer.Option(None, help=DEVICE_HELP),
    dtype: str = typer.Option(None, help=DTYPE_HELP),
    model_kwargs: str = typer.Option(None, help=KWARGS_HELP),
) -> None:
    """Serve MODEL with an OpenAI-compatible POST /v1/embeddings (plus /health and /metrics)."""
    from lm2vec.core.encoder import Encoder
    from lm2vec.serving.app import ServerSettings
    from lm2vec.serving.app import serve as run_server
    from lm2vec.serving.queue import QueueSettings

    encoder = Encoder.from_pretrained(model, max_length=max_length, device=device, dtype=dtype, merge_adapter=True,
                                      model_kwargs=_model_kwargs(model_kwargs))
    queue = QueueSettings(max_batch_size=max_batch_size, max_batch_tokens=max_batch_tokens,
                          max_queue_inputs=max_queue, max_wait_s=max_wait_ms / 1000, merge_requests=merge_requests)
    name = served_model_name or (Path(model).name if Path(model).is_dir() else model)
    settings = ServerSettings(model_name=name, max_inputs=min(max_inputs, max_queue), truncate=truncate,
                              max_body_bytes=int(max_body_mb * 1024 * 1024), normalize=normalize,
                              request_timeout_s=timeout, api_key=api_key or None, queue=queue)
    run_server(encoder, settings, host=host, port=port, drain_s=drain_seconds)


@app.command(name="export")
def export_model(
    model: str = typer.Argument(..., help="built-in name, local directory (trained encoder or adapter) or hub id"),
    output: Path = typer.Argument(..., help="new or empty folder to write (or an earlier export, with --overwrite)"),
    format: str = typer.Option(..., "--format", "-f", help="sentence-transformers | merged | onnx | openvino "
                               "(onnx and openvino: a sentence-transformers folder plus the traced graph)"),
    prompt: list[str] = typer.Option([], help="sentence-transformers prompt NAME=INSTRUCTION (repeatable)"),
    default_prompt: str = typer.Option(None, help="prompt NAME that encode() applies when none is given"),
    eval_results: Path = typer.Option(None, exists=True, dir_okay=False, help="evaluation JSON for the model card"),
    verify: bool = typer.Option(True, help="reload the export and check it gives lm2vec's vectors"),
    dtype: str = typer.Option(None, help="weights dtype (default float32)"),
    overwrite: bool = typer.Option(False, help="replace an earlier export in OUTPUT (other folders are refused)"),
    model_kwargs: str = typer.Option(None, help=KWARGS_HELP),
) -> None:
    """Write MODEL as a sentence-transformers folder (optionally with its ONNX or OpenVINO graph) or as plain
    merged safetensors, with a model card."""
    from lm2vec.export import export as run_export

    prompts = dict(item.split("=", 1) for item in prompt if "=" in item)
    if len(prompts) != len(prompt):
        raise ValueError("--prompt takes NAME=INSTRUCTION")
    if default_prompt and default_prompt not in prompts:
        raise ValueError(f"--default-prompt {default_prompt!r} names no --prompt (given: {sorted(prompts) or 'none'})")
    report = run_export(model, output, format, prompts=prompts, eval_results=eval_results, verify=verify, dtype=dtype,
                        overwrite=overwrite, default_prompt_name=default_prompt,
                        model_kwargs=_model_kwargs(model_kwargs))
    console.print(f"wrote {format} export to {output}" + (f" (min cosine vs lm2vec {report:.6f})" if report else ""))


def main() -> None:
    """Entry point: every failure becomes one `error:` line and an exit status (see cli_errors)."""
    exit_with(app)


if __name__ == "__main__":
    main()
