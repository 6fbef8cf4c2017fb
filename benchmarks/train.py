"""Training benchmark: Ray Train throughput with 1 and 2 workers, and the text classifier's
macro-F1 against a TF-IDF + logistic regression baseline on the same split.

Throughput is the engagement model's training samples per second (all workers together), the
median over epochs after the first (which includes warm-up), in one run for both worker counts.
The text comparison trains the MiniLM-head classifier with `jobs.train` and fits scikit-learn's
TfidfVectorizer + LogisticRegression on the identical train split, scoring both on the held-out
test split. Writes results/train.json and prints a table.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

import pandas as pd
import ray
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score

from benchmarks.common import env_info, start_ray, write_results
from slipway.config import load_config


def build_root(root: str, events: int, articles: int) -> None:
    """Generate, ingest and compute features into `root`."""
    from jobs.features import FeaturesConfig
    from jobs.features import main as features_job
    from jobs.generate import GenerateConfig
    from jobs.generate import main as generate_job
    from jobs.ingest import IngestConfig
    from jobs.ingest import main as ingest_job

    common = [f"storage.root={root}", "tracking.mode=disabled"]
    generate_job(load_config(GenerateConfig, "configs/generate.yaml", [
        *common, f"generator.num_events={events}", f"generator.num_articles={articles}"]))
    ingest_job(load_config(IngestConfig, "configs/ingest.yaml", common))
    features_job(load_config(FeaturesConfig, "configs/features.yaml", common))


def throughput(root: str, workers: int, examples: int, epochs: int) -> float:
    """Median samples/s over epochs after the first, for `workers` Ray Train workers."""
    from jobs.train import TrainConfig
    from jobs.train import main as train_job

    result = train_job(load_config(TrainConfig, "configs/train_engagement.yaml", [
        f"storage.root={root}", "tracking.mode=disabled", f"model_name=bench_{workers}w",
        f"engagement.max_examples={examples}", f"model.epochs={epochs}",
        f"trainer.num_workers={workers}", "trainer.keep_checkpoints=null"]))
    return statistics.median(result.history["train_samples_per_s"].iloc[1:])


def text_comparison(root: str) -> dict[str, float]:
    """Macro-F1 on the held-out split: MiniLM head (jobs.train) vs TF-IDF + LR."""
    from jobs.train import TrainConfig
    from jobs.train import main as train_job
    from slipway.models.scoring import predict_proba
    from slipway.registry import Registry
    from slipway.storage import Storage

    result = train_job(load_config(TrainConfig, "configs/train_text.yaml", [
        f"storage.root={root}", "tracking.mode=disabled", "model_name=bench_text"]))
    splits = result.version.metadata["splits_uri"]
    train = pd.read_parquet(f"{splits}/train.parquet")
    test = pd.read_parquet(f"{splits}/test.parquet")
    model, mv = Registry(Storage(root)).load("bench_text", result.version.version)
    ours = predict_proba(model, mv, test).argmax(axis=1)
    tfidf = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    baseline = LogisticRegression(max_iter=2000).fit(tfidf.fit_transform(train["text"]),
                                                     train["label"])
    theirs = baseline.predict(tfidf.transform(test["text"]))
    return {"text_macro_f1": f1_score(test["label"], ours, average="macro"),
            "tfidf_lr_macro_f1": f1_score(test["label"], theirs, average="macro"),
            "text_train_examples": len(train), "text_test_examples": len(test)}


def main() -> None:
    """Build data, measure, write results/train.json."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--articles", type=int, default=3_000)
    parser.add_argument("--examples", type=int, default=100_000)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    start_ray()
    with tempfile.TemporaryDirectory() as root:
        build_root(root, args.events, args.articles)
        one = throughput(root, 1, args.examples, args.epochs)
        two = throughput(root, 2, args.examples, args.epochs)
        text = text_comparison(root)
    ray.shutdown()
    results = {"env": env_info(("ray", "torch", "scikit-learn", "transformers")),
               "samples_per_s_1w": one, "samples_per_s_2w": two, "scaling_2w_vs_1w": two / one,
               "engagement_examples": args.examples, **text}
    write_results("train", results, [
        ("engagement samples/s, 1 worker", f"{one:,.0f}"),
        ("engagement samples/s, 2 workers", f"{two:,.0f} ({two / one:.2f}x)"),
        ("text macro-F1: MiniLM head / TF-IDF+LR",
         f"{text['text_macro_f1']:.3f} / {text['tfidf_lr_macro_f1']:.3f} "
         f"({text['text_test_examples']} held-out titles)"),
    ])


if __name__ == "__main__":
    main()
