"""Python half of bench/gpu_quality.sh: convert, train, pack (on the GPU machine) and import (here).

    python bench/gpu_quality.py convert GGUF OUT_DIR          # GGUF -> float32 model dir (atomic)
    python bench/gpu_quality.py train -- QUALITY_ARGS...      # bench/quality.py, also where mteb is missing
    python bench/gpu_quality.py pack --work DIR --out DIR --model DIR [--train-rc N] [--wall S]
    python bench/gpu_quality.py import DIR [--model smollm2-135m] [--dest runs/gpu-import] [--evaluate]

`pack` puts the LoRA adapters of the finished stages, every stage's log.jsonl, loss.png, DONE and
recipe.yaml, and the merged encoders' lm2vec_config.json into one tar.gz, cut into parts of at most
15 MiB (the device machine sends back at most 8 files of 16 MiB, 64 MiB in all); the tokenizer files,
equal in every adapter, travel once. `import` joins and checks the parts, then rebuilds the merged
encoders on the local base model in the order they were trained (MNTP adapter on the base, SimCSE and
supervised adapters on that merged MNTP encoder), so the evaluation runs with the CPU profile's code.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import io
import json
import os
import platform
import re
import runpy
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
ARCHIVE = "gpu-quality.tar.gz"
INFO = "gpu-quality-info.json"
PART_BYTES = 15 << 20  # each part <= 15 MiB (the limit is 16 MiB per file)
MAX_PARTS = 6  # + the info JSON + the training output = 8 files back at most
RETURN_LIMIT = 64 << 20  # everything under $OUT together
OBJECTIVES = ("mntp", "simcse", "supervised")
ADAPTER_OWN = {"adapter_model.safetensors", "adapter_config.json", "lm2vec_config.json", "README.md"}


# ---- shared helpers ------------------------------------------------------------------------------
def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_digest(model_dir: Path) -> dict[str, str]:
    """sha256 (16 hex digits) of every tensor's raw bytes, by name: equal weights, whatever the file layout."""
    import torch
    from safetensors import safe_open

    out = {}
    for file in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                tensor = handle.get_tensor(name)
                raw = tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
                out[name] = f"{tensor.dtype}:{list(tensor.shape)}:" + hashlib.sha256(raw).hexdigest()[:16]
    if not out:
        raise SystemExit(f"no safetensors weights in {model_dir}")
    return out


def compare_digests(theirs: dict[str, str], ours: dict[str, str]) -> list[str]:
    """Problems (empty when the weights are the same); tensors saved on one side only (tied) are allowed."""
    common = set(theirs) & set(ours)
    if not common:
        return ["no tensor names in common"]
    return [f"{name}: {theirs[name]} there, {ours[name]} here" for name in sorted(common) if theirs[name] != ours[name]]


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def device_slug(name: str) -> str:
    """'NVIDIA H200' -> 'h200'; 'cpu' -> 'cpu' (for file names and --tag)."""
    name = re.sub(r"^nvidia\s+", "", name.strip(), flags=re.I)
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"


# ---- convert -------------------------------------------------------------------------------------
def cmd_convert(args) -> None:
    sys.path.insert(0, str(ROOT / "src"))
    from lm2vec.core.models import convert_gguf

    out = Path(args.out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    began = time.time()
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}-") as tmp:
        staged = Path(tmp) / "model"
        convert_gguf(Path(args.gguf).resolve(), staged)
        shutil.rmtree(out, ignore_errors=True)
        os.replace(staged, out)
    print(f"converted {args.gguf} -> {out} in {time.time() - began:.0f} s", flush=True)


# ---- train ---------------------------------------------------------------------------------------
def cmd_train(rest: list[str]) -> None:
    """Run bench/quality.py as it is (it imports mteb only to evaluate, so --train-only runs without it)."""
    sys.path.insert(0, str(ROOT / "src"))
    sys.argv = [str(BENCH / "quality.py"), *rest]
    runpy.run_path(str(BENCH / "quality.py"), run_name="__main__")


# ---- pack ----------------------------------------------------------------------------------------
def stage_dirs(work: Path) -> dict[str, Path]:
    """The newest stage folder of each objective (<objective>-<hash>/, as bench/sweep.py trains each
    stage once: log.jsonl, adapter/, merged/, DONE)."""
    found: dict[str, Path] = {}
    for objective in OBJECTIVES:
        stages = sorted((p for p in work.glob(f"{objective}-*") if (p / "log.jsonl").is_file()),
                        key=lambda p: (p / "log.jsonl").stat().st_mtime)
        if stages:
            found[objective] = stages[-1]
    return found


def stage_status(stage: Path, objective: str) -> dict:
    log = read_log(stage / "log.jsonl")
    steps = [r["step"] for r in log if "loss" in r]
    return {"dir": stage.name, "done": (stage / "DONE").is_file() and (stage / "adapter").is_dir(),
            "steps": max(steps, default=0), "minutes": round(max((r.get("elapsed", 0.0) for r in log), default=0.0) / 60, 2),
            "final_dev": next((100 * r["dev_spearman"] for r in reversed(log) if "dev_spearman" in r), None)}


def machine_info() -> dict:
    import peft
    import torch
    import transformers

    smi = ""
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.strip()
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {"device": device, "device_slug": device_slug(device), "nvidia_smi_L": smi or "cpu",
            "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "cuda": torch.version.cuda}


def cmd_pack(args) -> None:
    work, out = Path(args.work), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = stage_dirs(work) if work.is_dir() else {}
    status = {objective: stage_status(run, objective) for objective, run in runs.items()}
    manifest = {"profile": work.name, "stages": status, "shared_files": {}}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=args.compresslevel) as tar:
        shared: dict[str, str] = {}  # tokenizer file name -> sha256 of the copy under shared/

        def add(path: Path, name: str) -> None:
            tar.add(str(path), arcname=name, recursive=False)

        for objective, stage in runs.items():
            for name in ("log.jsonl", "loss.png", "DONE", "merged/lm2vec_config.json"):
                if (stage / name).is_file():
                    add(stage / name, f"work/{stage.name}/{name}")
            if not status[objective]["done"]:
                continue
            adapter, skipped = stage / "adapter", []
            for file in sorted(p for p in adapter.iterdir() if p.is_file()):
                arc = f"work/{stage.name}/adapter/{file.name}"
                if file.name in ADAPTER_OWN:
                    add(file, arc)
                    continue
                digest = sha256_file(file)
                if shared.get(file.name) == digest:
                    skipped.append(file.name)
                    continue
                if file.name not in shared:
                    shared[file.name] = digest
                    add(file, f"shared/{file.name}")
                    skipped.append(file.name)
                else:
                    add(file, arc)  # differs from the shared copy: travels in its own place
            manifest["shared_files"][f"work/{stage.name}/adapter"] = skipped
        blob = json.dumps(manifest, indent=1).encode()
        entry = tarfile.TarInfo("manifest.json")
        entry.size, entry.mtime = len(blob), int(time.time())
        tar.addfile(entry, io.BytesIO(blob))
    data = buffer.getvalue()
    parts = [data[i : i + PART_BYTES] for i in range(0, len(data), PART_BYTES)] or [b""]
    if len(parts) > MAX_PARTS or len(data) > RETURN_LIMIT - (2 << 20):
        raise SystemExit(f"the archive is {len(data) / 2**20:.1f} MiB: more than {MAX_PARTS} parts or the 64 MiB "
                         "that come back; send fewer stages per call")
    for old in out.glob(f"{ARCHIVE}.part*"):
        old.unlink()
    for index, part in enumerate(parts):
        (out / f"{ARCHIVE}.part{index}").write_bytes(part)
    info = {"date": datetime.date.today().isoformat(), **machine_info(), "profile": work.name, "stages": status,
            "complete": all(status.get(o, {}).get("done") for o in OBJECTIVES),
            "train_rc": args.train_rc, "wall_seconds_this_call": args.wall, "archive_sha256": hashlib.sha256(data).hexdigest(),
            "archive_bytes": len(data), "parts": len(parts),
            "gguf_sha256": Path(args.gguf_sha256).read_text().split()[0]
            if args.gguf_sha256 and Path(args.gguf_sha256).is_file() else None,
            "base_digest": weights_digest(Path(args.model)) if args.model and Path(args.model).is_dir() else None}
    (out / INFO).write_text(json.dumps(info, indent=1) + "\n")
    summary = {o: f"{s['steps']} steps, {s['minutes']} min, dev {s['final_dev'] and round(s['final_dev'], 2)}"
               f"{', done' if s['done'] else ''}" for o, s in status.items()}
    print(f"packed {len(data) / 2**20:.1f} MiB in {len(parts)} part(s) into {out}: {json.dumps(summary)}", flush=True)


# ---- import --------------------------------------------------------------------------------------
def unpack(source: Path, raw: Path) -> tuple[dict, dict]:
    info = json.loads((source / INFO).read_text())
    parts = sorted(source.glob(f"{ARCHIVE}.part*"), key=lambda p: int(p.name.rsplit("part", 1)[1]))
    if len(parts) != info["parts"]:
        raise SystemExit(f"{source}: {len(parts)} part(s) of {info['parts']}")
    data = b"".join(p.read_bytes() for p in parts)
    if hashlib.sha256(data).hexdigest() != info["archive_sha256"]:
        raise SystemExit(f"{source}: the joined parts do not match the sha256 recorded on the device")
    shutil.rmtree(raw, ignore_errors=True)
    raw.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(raw, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    manifest = json.loads((raw / "manifest.json").read_text())
    for adapter, names in manifest["shared_files"].items():
        for name in names:
            shutil.copyfile(raw / "shared" / name, raw / adapter / name)
    return info, manifest


def dev_curves(raw: Path, manifest: dict) -> dict[str, list[dict]]:
    """Per variant, as bench/sweep.py's run_variant builds them: one time axis across the stages."""
    logs = {o: read_log(raw / "work" / s["dir"] / "log.jsonl") for o, s in manifest["stages"].items()}

    def points(objective: str, offset: float) -> list[dict]:
        return [{"stage": objective, "step": r["step"], "minutes": (offset + r["elapsed"]) / 60,
                 "dev": 100 * r["dev_spearman"]} for r in logs.get(objective, []) if "dev_spearman" in r]

    mntp_seconds = max((r.get("elapsed", 0.0) for r in logs.get("mntp", [])), default=0.0)
    curves = {"mntp": points("mntp", 0.0)}
    for objective in ("simcse", "supervised"):
        curves[objective] = curves["mntp"] + points(objective, mntp_seconds)
    return curves


def cmd_import(args) -> None:
    sys.path.insert(0, str(ROOT / "src"))
    import torch

    from lm2vec import Encoder
    from lm2vec.core.models import resolve_model_path

    dest = Path(args.dest)
    info, manifest = unpack(Path(args.dir), dest / "raw")
    stages = manifest["stages"]
    base = resolve_model_path(args.model)
    if info.get("base_digest"):
        problems = compare_digests(info["base_digest"], weights_digest(Path(base)))
        if problems and not args.allow_base_mismatch:
            raise SystemExit(f"the local base {base} differs from the weights trained on there ({len(problems)} "
                             f"tensors, e.g. {problems[0]}); pass --allow-base-mismatch to rebuild anyway")
        print(f"base weights: {'the same as' if not problems else 'DIFFERENT from'} those trained on there "
              f"({len(info['base_digest'])} tensors)", flush=True)
    if not stages.get("mntp", {}).get("done"):
        raise SystemExit("the MNTP stage did not finish there: nothing to rebuild (run `train` again there)")
    adapters = {o: dest / "raw" / "work" / s["dir"] / "adapter" for o, s in stages.items() if s["done"]}
    mntp_run = stages["mntp"]["dir"]
    rebuilt: dict[str, str] = {}
    for objective in OBJECTIVES:
        if objective not in adapters:
            print(f"{objective}: not finished there ({stages.get(objective, {}).get('steps', 0)} steps); skipped")
            continue
        trained_on = json.loads((adapters[objective] / "lm2vec_config.json").read_text())["base_model"]
        if objective == "mntp":
            on = args.model
        else:
            if Path(trained_on).parent.name != mntp_run:  # .../mntp-<hash>/merged
                raise SystemExit(f"{objective} was trained on {trained_on}, not on the MNTP encoder of {mntp_run}")
            on = rebuilt["mntp"]
        began = time.time()
        encoder = Encoder.from_pretrained(adapters[objective], merge_adapter=True, device="cpu", dtype=torch.float32,
                                          base_model=on)
        target = dest / objective
        encoder.save_pretrained(target)
        rebuilt[objective] = str(target.resolve())
        print(f"{objective}: adapter (trained on {trained_on}) merged into {on} -> {target} "
              f"in {time.time() - began:.0f} s", flush=True)
        del encoder
    date, slug = info["date"], info["device_slug"]
    logs = {o: read_log(dest / "raw" / "work" / s["dir"] / "log.jsonl") for o, s in stages.items()}
    payload = {"date": date, "device": info["device"], "machine": {k: info.get(k) for k in (
        "nvidia_smi_L", "python", "torch", "transformers", "peft", "cuda")}, "profile": info["profile"],
        "stages": stages, "train_minutes": {"mntp": stages["mntp"]["minutes"], **{
            o: round(stages["mntp"]["minutes"] + stages[o]["minutes"], 2) for o in ("simcse", "supervised") if o in stages}},
        "dev_curves": dev_curves(dest / "raw", manifest), "logs": logs, "rebuilt_encoders": rebuilt,
        "rebuilt_on": str(args.model), "archive_sha256": info["archive_sha256"], "gguf_sha256": info.get("gguf_sha256")}
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    logs_file = results / f"quality-{info['profile']}-{slug}-{date}-logs.json"
    logs_file.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"logs and dev curves -> {logs_file}")
    command = [sys.executable, str(BENCH / "quality.py"), "--profile", info["profile"], "--encoders",
               *[f"{o}={d}" for o, d in rebuilt.items()], "--variants", *rebuilt, "--tag", f"gpu-{slug}",
               "--data-dir", str(args.data_dir), "--model", str(args.model)]
    print("evaluate with:\n  " + " ".join(command), flush=True)
    if args.evaluate:
        subprocess.run(command, check=True, env={**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{os.environ.get('PYTHONPATH', '')}"})


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "train":
        rest = sys.argv[2:]
        cmd_train(rest[1:] if rest[:1] == ["--"] else rest)
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    convert = sub.add_parser("convert")
    convert.add_argument("gguf")
    convert.add_argument("out_dir")
    pack = sub.add_parser("pack")
    pack.add_argument("--work", required=True, help="quality.py's --work / profile")
    pack.add_argument("--out", required=True)
    pack.add_argument("--model", help="the base the stages trained on: its weights' digest is recorded")
    pack.add_argument("--gguf-sha256", help="file holding the GGUF's sha256 (recorded)")
    pack.add_argument("--train-rc", type=int)
    pack.add_argument("--wall", type=int)
    pack.add_argument("--compresslevel", type=int, default=1)
    imp = sub.add_parser("import")
    imp.add_argument("dir", help="the folder holding the files that came back")
    imp.add_argument("--model", default="smollm2-135m", help="the local base (built-in name or model dir)")
    imp.add_argument("--dest", default="runs/gpu-import")
    imp.add_argument("--results", default="bench/results")
    imp.add_argument("--data-dir", default="../shared/data")
    imp.add_argument("--evaluate", action="store_true", help="run the quality.py evaluation afterwards")
    imp.add_argument("--allow-base-mismatch", action="store_true")
    args = parser.parse_args()
    {"convert": cmd_convert, "pack": cmd_pack, "import": cmd_import}[args.command](args)


if __name__ == "__main__":
    main()
