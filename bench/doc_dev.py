"""The sweep's document dev for given encoders, with and without an instruction on the queries.

An encoder trained with an instruction (SimCSE's `instruction:`) is meant to be queried with one, so
its document dev without one undersells it. This scores each encoder both ways, on the same SciFact
*train* claims and abstracts as `bench/sweep.py` (a split no benchmark scores):

    python bench/doc_dev.py --encoders plain=runs/sweep/cpu/simcse-<hash>/merged instr=... --tag r16-vs-instruction
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweep import document_dev  # noqa: E402

from lm2vec.eval.mteb_instructions import default_instructions  # noqa: E402
from lm2vec.io import write_json_atomic  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoders", nargs="+", metavar="NAME=DIR", required=True)
    p.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    p.add_argument("--instruction", default=default_instructions()["SciFact"], help="on the queries (LLM2Vec's SciFact one)")
    p.add_argument("--doc-queries", type=int, default=150)
    p.add_argument("--doc-distractors", type=int, default=350)
    p.add_argument("--doc-max-length", type=int, default=160)
    p.add_argument("--results", type=Path, default=Path("bench/results"))
    p.add_argument("--tag", default="")
    args = p.parse_args()
    rows = {}
    for name, directory in (item.split("=", 1) for item in args.encoders):
        rows[name] = {"encoder": directory, "no instruction": document_dev(directory, args),
                      "instruction": document_dev(directory, args, query_instruction=args.instruction)}
        print(f"{name:30} no instruction {rows[name]['no instruction']:5.1f}   instruction {rows[name]['instruction']:5.1f}")
    date = datetime.date.today().isoformat()
    out = args.results / f"doc-dev{'-' + args.tag if args.tag else ''}-{date}.json"
    write_json_atomic(out, {"date": date, "instruction": args.instruction, "settings": {
        k: v for k, v in vars(args).items() if k.startswith("doc_")}, "rows": rows})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
