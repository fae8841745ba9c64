"""Word-level probe classifier: our full-batch L-BFGS logistic regression vs scikit-learn's
LogisticRegression on the same word vectors (same objective: mean cross-entropy + ||W||^2 / (2 C n),
standardised features, C=0.01, 100 iterations). Decides which one `lm2vec probe` uses.

    python bench/probe_classifier.py --data-dir ../shared/data [--model smollm2-135m]

Prints a table and writes bench/results/probe-classifier-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import platform
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from lm2vec import Encoder
from lm2vec.eval.conll import IOB_COLUMNS, load_split, tag_scores
from lm2vec.eval.probe_classifier import fit_classifier
from lm2vec.eval.probes import subsample, word_features
from lm2vec.io import write_json_atomic


def sklearn_fit(x: np.ndarray, y: np.ndarray, c: float, max_iter: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning at 100 iterations, as ours
        model = LogisticRegression(C=c, max_iter=max_iter).fit(scaler.transform(x), y)
    return lambda features: model.predict(scaler.transform(features))


def score(task: str, test, predicted: np.ndarray) -> float:
    gold = [list(s.tags[task]) for s in test]
    bounds = np.cumsum([0] + [len(g) for g in gold])
    guesses = [list(predicted[a:b]) for a, b in itertools.pairwise(bounds)]
    scores = tag_scores(gold, guesses, task in IOB_COLUMNS)
    return 100 * scores["f1" if task == "ner" else "accuracy"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    p.add_argument("--train", type=int, default=800)
    p.add_argument("--test", type=int, default=600)
    p.add_argument("--results", type=Path, default=Path("bench/results"))
    args = p.parse_args()
    encoder = Encoder.from_pretrained(args.model, bidirectional=False, pooling="mean", dtype="float32")
    train = subsample(load_split(args.data_dir, "conll2003", "train"), args.train)
    test = subsample(load_split(args.data_dir, "conll2003", "test"), args.test)
    x_train, x_test = word_features(encoder, train), word_features(encoder, test)
    rows = []
    for task in ("pos", "chunk", "ner"):
        y = np.asarray([t for s in train for t in s.tags[task]], dtype=object)
        keep, has_test = ~np.isnan(x_train[:, 0]), ~np.isnan(x_test[:, 0])
        majority = Counter(y).most_common(1)[0][0]
        for name in ("lm2vec L-BFGS (torch)", "scikit-learn LogisticRegression"):
            started = time.perf_counter()
            if name.startswith("lm2vec"):
                predict = fit_classifier(x_train[keep], list(y[keep]), c=0.01, max_iter=100).predict
            else:
                predict = sklearn_fit(x_train[keep], y[keep], c=0.01, max_iter=100)
            fit_s = time.perf_counter() - started
            predicted = np.full(len(x_test), majority, dtype=object)
            predicted[has_test] = predict(x_test[has_test])
            rows.append({"task": task, "classifier": name, "fit_s": round(fit_s, 2), "score": round(score(task, test, predicted), 2),
                         "train_words": int(keep.sum()), "classes": len(set(y))})
    print("| task | classifier | fit s | score |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['task']} | {r['classifier']} | {r['fit_s']:.1f} | {r['score']:.2f} |")
    date = datetime.date.today().isoformat()
    write_json_atomic(args.results / f"probe-classifier-{date}.json", {
        "date": date, "model": args.model, "device": f"CPU {platform.machine()}, {torch.get_num_threads()} threads",
        "features": "causal, last hidden layer, first sub-token, float32", "train_sentences": args.train,
        "test_sentences": args.test, "rows": rows})


if __name__ == "__main__":
    main()
