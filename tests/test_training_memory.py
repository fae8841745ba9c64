"""keep_freed_memory: a block freed by one training step is reused by the next without page faults."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

PROBE = """
import json, resource, sys, torch
from lm2vec.training.memory import keep_freed_memory
tuned = keep_freed_memory() if sys.argv[1] == "tuned" else False
faults = []
for _ in range(4):  # what a step does: allocate 64 MB, use it, free it
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = torch.ones(16 * 2**20)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    del block
print(json.dumps({"tuned": tuned, "faults": faults}))
"""


def faults_per_step(mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.system() != "Linux", reason="glibc malloc settings are Linux-only")
def test_freed_blocks_are_reused_without_page_faults():
    default, tuned = faults_per_step("default"), faults_per_step("tuned")
    pages = 64 * 2**20 // 4096
    assert min(default["faults"][1:]) > pages // 2  # glibc unmapped the block: every step faults it in again
    assert tuned["tuned"] is True
    assert min(tuned["faults"][1:]) < pages // 100  # kept mapped: later steps reuse it (the 2nd may not yet)


def test_switched_off_by_the_environment(monkeypatch):
    from lm2vec.training import memory

    memory.keep_freed_memory.cache_clear()
    monkeypatch.setenv("LM2VEC_KEEP_FREED_MEMORY", "0")
    try:
        assert memory.keep_freed_memory() is False
    finally:
        memory.keep_freed_memory.cache_clear()
