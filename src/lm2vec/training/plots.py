"""Training curves as PNG, from a training log (JSONL with step, loss and, when evaluated, dev_spearman)."""

from __future__ import annotations

import json
from pathlib import Path

from lm2vec.io import write_atomic


def _moving_average(values: list[float], window: int) -> list[float]:
    return [sum(values[max(0, i - window + 1) : i + 1]) / len(values[max(0, i - window + 1) : i + 1])
            for i in range(len(values))]


def plot_loss_curve(log_path: Path, png_path: Path, title: str = "") -> Path | None:
    """Plot loss against step (raw and a moving average) and, if logged, the dev score on a second axis;
    None if there is nothing to plot."""
    if not log_path.is_file():
        return None
    records = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    trained = [r for r in records if "loss" in r]
    if not trained:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, losses = [r["step"] for r in trained], [r["loss"] for r in trained]
    window = max(1, len(losses) // 20)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, losses, alpha=0.35, label="loss")
    ax.plot(steps, _moving_average(losses, window), label=f"moving average ({window})")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    handles, labels = ax.get_legend_handles_labels()
    dev = [r for r in records if "dev_spearman" in r]
    if dev:
        right = ax.twinx()
        right.plot([r["step"] for r in dev], [100 * r["dev_spearman"] for r in dev], "o-", color="C2",
                   label="dev Spearman x100")
        right.set_ylabel("dev Spearman x100")
        more = right.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    ax.legend(handles, labels, fontsize=8)
    fig.tight_layout()
    write_atomic(png_path, lambda handle: fig.savefig(handle, dpi=100, format="png"), mode="wb")
    plt.close(fig)
    return png_path
