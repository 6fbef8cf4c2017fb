"""Label quality and active learning on real text: this machine's manual-page summaries labelled
by section (slipway/data/man_pages.py), TF-IDF features and a logistic regression.

- `label_issue_precision` / `label_issue_recall`: 10% of labels flipped at random, the issues
  cleanlab finds on out-of-fold probabilities (slipway/labeling/issues.py) against the flips.
- `consensus_accuracy_crowdlab` / `consensus_accuracy_majority`: three simulated annotators
  flipping 5%, 15% and 40% of labels; the consensus (slipway/labeling/quality.py) against the
  truth, with the model CROWDLAB weighs in trained out of fold on the majority labels.
- Learning curves: from 20 random labels, rounds of 20 up to `BUDGET`, picked at random or by the
  shipped selection (slipway/labeling/selection.py: margin uncertainty, near-copies skipped);
  macro-F1 on a held-out 30%. `labels_to_reach_random_f1`: the labels the active strategy needs
  to reach the macro-F1 random selection reaches with the full budget, as a share of that budget
  (interpolated between rounds; above 1 means it never got there).

All averaged over `SEEDS` seeds; the curves are plotted to results/labeling.png.
"""

from __future__ import annotations

import time

import matplotlib
import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.model_selection import train_test_split

from benchmarks.common import RESULTS, env_info, write_results
from slipway.data.man_pages import man_page_summaries
from slipway.labeling import simulated
from slipway.labeling.issues import label_issues, out_of_fold_probabilities
from slipway.labeling.quality import consensus, label_matrix
from slipway.labeling.selection import SelectionSettings, select

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)

PER_SECTION, SEEDS, START, ROUND, BUDGET = 150, 5, 20, 20, 300
NOISE = {"careful": 0.05, "average": 0.15, "sloppy": 0.40}


def issues_found(features, truth, classes, seed: int) -> tuple[float, float]:
    """Precision and recall of the label issues found with 10% of labels flipped."""
    noisy = simulated.flipped(truth, 0.10, len(classes), np.random.default_rng(seed))
    issues = label_issues(noisy, out_of_fold_probabilities(features, noisy, seed=seed), classes)
    found, injected = set(issues["row"]), set(np.flatnonzero(noisy != truth))
    hits = len(found & injected)
    return hits / max(len(found), 1), hits / len(injected)


def consensus_accuracy(features, truth, classes, seed: int) -> tuple[float, float]:
    """CROWDLAB's and majority vote's accuracy against the truth."""
    annotations = simulated.annotate(np.arange(len(truth)), truth, classes, NOISE, seed)
    matrix = label_matrix(annotations, classes)
    majority = matrix.mode(axis=1)[0].to_numpy(int)
    result = consensus(matrix, out_of_fold_probabilities(features, majority, seed=seed))
    return (float(np.mean(result.items["label"].to_numpy() == truth)),
            float(np.mean(result.items["majority"].to_numpy() == truth)))


def curve(features, truth, seed: int, active: bool) -> list[float]:
    """Macro-F1 on the held-out rows after each round, labels picked at random or actively."""
    rng = np.random.default_rng(seed)
    pool, test = train_test_split(np.arange(len(truth)), test_size=0.3, random_state=seed,
                                  stratify=truth)
    labelled = list(rng.choice(pool, START, replace=False))
    scores = []
    while True:
        model = LogisticRegression(max_iter=2000).fit(features[labelled], truth[labelled])
        scores.append(f1_score(truth[test], model.predict(features[test]), average="macro"))
        if len(labelled) >= BUDGET:
            return scores
        rest = np.setdiff1d(pool, labelled)
        if active:
            probs = np.zeros((len(rest), truth.max() + 1))
            probs[:, model.classes_] = model.predict_proba(features[rest])
            picked = select(rest, probs, features[rest].toarray(), SelectionSettings(
                budget=ROUND, relabel_share=0, gold_share=0))["item"].tolist()
        else:
            picked = list(rng.choice(rest, ROUND, replace=False))
        labelled += picked


def labels_to_reach(active: np.ndarray, target: float, sizes: np.ndarray) -> float:
    """Labels at which the `active` curve first reaches `target` (linear between rounds), as a
    share of the full budget; above 1 when it never does."""
    above = np.flatnonzero(active >= target)
    if not len(above):
        return float("inf")
    i = above[0]
    if i == 0:
        return float(sizes[0] / sizes[-1])
    x0, x1, y0, y1 = sizes[i - 1], sizes[i], active[i - 1], active[i]
    return float((x0 + (target - y0) / (y1 - y0) * (x1 - x0)) / sizes[-1])


def main() -> None:
    """Run every measurement and write results/labeling.json and results/labeling.png."""
    start = time.perf_counter()
    df = man_page_summaries(PER_SECTION, seed=0)
    classes = sorted(df["label"].unique())
    truth = df["label"].map(classes.index).to_numpy()
    features = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2)).fit_transform(df["text"])
    issues = np.array([issues_found(features, truth, classes, s) for s in range(SEEDS)])
    agree = np.array([consensus_accuracy(features, truth, classes, s) for s in range(SEEDS)])
    random_curve = np.mean([curve(features, truth, s, False) for s in range(SEEDS)], axis=0)
    active_curve = np.mean([curve(features, truth, s, True) for s in range(SEEDS)], axis=0)
    sizes = np.arange(START, BUDGET + 1, ROUND)
    share = labels_to_reach(active_curve, random_curve[-1], sizes)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(sizes, random_curve, marker="o", label="random")
    ax.plot(sizes, active_curve, marker="o", label="uncertainty + diversity")
    ax.axhline(random_curve[-1], color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="labels", ylabel="held-out macro-F1",
           title=f"Man-page sections, TF-IDF + logistic regression ({SEEDS} seeds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "labeling.png", dpi=120)
    results = {
        "label_issue_precision": float(issues[:, 0].mean()),
        "label_issue_recall": float(issues[:, 1].mean()),
        "consensus_accuracy_crowdlab": float(agree[:, 0].mean()),
        "consensus_accuracy_majority": float(agree[:, 1].mean()),
        "labels_to_reach_random_f1": share if np.isfinite(share) else None,
        "learning_curves": {"labels": sizes.tolist(), "random": random_curve.round(4).tolist(),
                            "active": active_curve.round(4).tolist()},
        "settings": {"texts": len(df), "classes": classes, "seeds": SEEDS, "noise": NOISE,
                     "injected_label_noise": 0.10, "start": START, "round": ROUND,
                     "budget": BUDGET, "features": "tf-idf (1-2 grams)"},
        "seconds": round(time.perf_counter() - start, 1),
        "env": env_info(("cleanlab", "scikit-learn", "numpy")),
    }
    table = [(k, str(v)) for k, v in results.items()
             if k not in ("env", "settings", "learning_curves")]
    write_results("labeling", results, table)


if __name__ == "__main__":
    main()
