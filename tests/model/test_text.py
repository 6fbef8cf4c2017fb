"""The text classifier on a user's own CSV: train, load by alias, evaluate, behavioural gate."""

from __future__ import annotations

import csv
import glob
import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.pipeline import make_pipeline

from jobs.evaluate import EvaluateConfig
from jobs.evaluate import main as evaluate_job
from jobs.promote import PromoteConfig
from jobs.promote import main as promote_job
from jobs.train import TrainConfig
from jobs.train import main as train_job
from slipway.config import load_config
from slipway.data.man_pages import man_page_summaries
from slipway.errors import SlipwayError
from slipway.models.hf import load_tokenizer
from slipway.models.text import DEFAULT_ENCODER, TextClassifier, encoder_path
from slipway.registry import Registry
from slipway.storage import Storage

pytestmark = pytest.mark.usefixtures("ray_session")

TOPICS = {
    "billing": "invoice refund charge payment card billed subscription price receipt",
    "bug": "crash error freezes broken button screen loading fails bug",
    "account": "password login email username account locked sign profile",
}
FRAMES = ["My {a} {b} problem, please help", "Why is the {a} {b}?", "{a}: {b} again today",
          "Question about {a}, {b} and more", "The {a} is {b} since Monday"]


def write_tickets(path, n_per_class: int = 40) -> None:
    """A support-ticket CSV like a user's: quoted commas, a multi-line text, unlabelled rows."""
    rng = np.random.default_rng(3)
    rows = []
    for label, words in TOPICS.items():
        vocab = words.split()
        for _ in range(n_per_class):
            a, b = rng.choice(vocab, 2, replace=False)
            rows.append({"ticket": rng.choice(FRAMES).format(a=a, b=b), "queue": label})
    rows.append({"ticket": "Refund, please:\nI was billed twice", "queue": "billing"})
    rows.append({"ticket": "no label on this one", "queue": ""})
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["ticket", "queue"])
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture(scope="module")
def tickets(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tickets")
    write_tickets(folder / "tickets.csv")
    root = str(folder / "root")
    cfg = load_config(TrainConfig, "configs/train_text.yaml", [
        f"storage.root={root}", "tracking.mode=disabled", "model_name=tickets",
        f"text.path={folder / 'tickets.csv'}", "text.text_columns=[ticket]",
        "text.label_column=queue", "text.embed_actors=1", "trainer.num_workers=1",
        "model.epochs=4", "model.batch_size=16", "model.lr=0.01",  # 24 steps on 84 rows
        "text.candidates=[frozen_encoder, lexical, combined]"])  # v1-v3, the best challenger
    return root, folder, train_job(cfg)


def checks_file(folder, expected_bug: str) -> str:
    path = folder / f"checks-{expected_bug}.yaml"
    path.write_text(yaml.safe_dump({
        "min_pass_rate": 1.0,
        "min_functionality": [{"text": "I need a refund for this invoice", "label": "billing"},
                              {"text": "The app crash shows an error", "label": expected_bug},
                              {"text": "Cannot login, password reset email", "label": "account"}],
        "perturbations": ["lowercase", "suffix: Thanks!"]}))
    return str(path)


def test_text_classifier_trains_on_a_user_csv_and_loads_by_alias(tickets):
    root, _, result = tickets
    meta = result.version.metadata
    assert meta["task"] == "text" and meta["labels"] == ["account", "billing", "bug"]
    # 121 labelled rows (the unlabelled one is left out), split 70/15/15 by class.
    assert sum(meta["examples"].values()) == 121
    assert meta["metrics"]["valid_macro_f1"] > 0.8
    model, mv = Registry(Storage(root)).load("tickets", "challenger")
    assert mv.version == result.version.version
    proba = model.predict_proba(["Where is my refund for the double charge?",
                                 "Login fails, my account is locked"])
    assert proba.shape == (2, 3) and np.allclose(proba.sum(axis=1), 1, atol=1e-5)
    assert [meta["labels"][i] for i in proba.argmax(axis=1)] == ["billing", "account"]
    # Only the head is stored: the frozen encoder comes from the package.
    weights = Storage(root).read_bytes("models", "tickets", "versions", "0001",
                                       "model.safetensors")
    assert len(weights) < 2_000_000


def test_evaluation_reports_behavioural_checks_the_lexical_baseline_and_the_candidates(tickets):
    root, folder, _ = tickets
    ev = evaluate_job(load_config(EvaluateConfig, None, [
        f"storage.root={root}", "tracking.mode=disabled", "model_name=tickets",
        f"behaviour_checks={checks_file(folder, 'bug')}"]))
    assert ev.metrics["macro_f1"] > 0.8
    assert {s["slice"] for s in ev.slices} >= {"label_name=bug", "length=short"}
    assert ev.behaviour["passed"], ev.behaviour["cases"]
    assert len(ev.behaviour["cases"]) == 3 + 3 * 2
    report = json.loads(open(ev.report_uri).read())
    assert report["behaviour"]["pass_rates"] == {"min_functionality": 1.0, "invariance": 1.0}
    # Beside the model: TF-IDF + logistic regression fitted on the model's own training rows and
    # scored on the same held-out rows, as scikit-learn computes it here.
    splits = ev.version.metadata["splits_uri"]
    train, test = (pd.read_parquet(f"{splits}/{s}.parquet") for s in ("train", "test"))
    reference = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
                              LogisticRegression(max_iter=2000)).fit(train["text"], train["label"])
    expected = f1_score(test["label"], reference.predict(test["text"]), average="macro")
    assert report["baseline"]["name"] == "tfidf_lr"
    assert report["baseline"]["macro_f1"] == pytest.approx(expected)
    assert ev.baseline["accuracy"] == pytest.approx(
        np.mean(reference.predict(test["text"]) == test["label"]))
    # The candidates on the same held-out rows: the winner's figures are the report's own, and
    # the lexical candidate's equal the baseline's (the same model, fitted in jobs.evaluate).
    compared = report["candidates"]["candidates"]
    assert {c["version"] for c in compared.values()} == {1, 2, 3}
    winner = next(c for c in compared.values() if c["version"] == ev.version.version)
    assert winner["test"]["macro_f1"] == pytest.approx(report["metrics"]["macro_f1"])
    assert compared["lexical"]["test"]["macro_f1"] == pytest.approx(expected)


def test_the_lexical_candidate_registers_and_reloads_as_scikit_learn_fits_it(tickets):
    root, _, _ = tickets
    registry = Registry(Storage(root))
    frozen, lexical = registry.get("tickets", 1), registry.get("tickets", 2)
    meta = lexical.metadata
    assert (meta["runtime"], meta["task"], meta["labels"]) == (
        "lexical", "text", ["account", "billing", "bug"])
    assert frozen.metadata["architecture"]["params"]["train_encoder"] is False
    assert meta["examples"] == frozen.metadata["examples"]  # the same split
    # The best on validation is the challenger (the first on a tie).
    best = max((frozen, lexical, registry.get("tickets", 3)),
               key=lambda v: v.metrics["valid_macro_f1"])
    assert registry.aliases("tickets")["challenger"] == best.version
    # Reloaded from its folder (no pickle): the probabilities scikit-learn's own pipeline gives,
    # fitted here on the same training rows; its validation macro-F1 as scikit-learn scores it.
    model, _ = registry.load("tickets", 2)
    splits = meta["splits_uri"]
    train, valid, test = (pd.read_parquet(f"{splits}/{s}.parquet")
                          for s in ("train", "valid", "test"))
    reference = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
                              LogisticRegression(max_iter=2000)).fit(train["text"], train["label"])
    np.testing.assert_allclose(model.predict_proba(test["text"]),
                               reference.predict_proba(test["text"]), atol=1e-9)
    assert meta["metrics"]["valid_macro_f1"] == pytest.approx(
        f1_score(valid["label"], reference.predict(valid["text"]), average="macro"))
    # Evaluated like any version: it is its own baseline.
    ev = evaluate_job(load_config(EvaluateConfig, None, [
        f"storage.root={root}", "tracking.mode=disabled", "model_name=tickets", "ref=2",
        "against=null"]))
    assert ev.metrics["macro_f1"] == pytest.approx(ev.baseline["macro_f1"])


def reference_embeddings(texts: list[str], max_length: int) -> np.ndarray:
    """MiniLM sentence embeddings computed here with transformers: token states mean-pooled
    over the attention mask, L2-normalised."""
    from transformers import AutoModel

    path = encoder_path(DEFAULT_ENCODER)
    tokens = load_tokenizer(path)(texts, padding=True, truncation=True, max_length=max_length,
                                  return_tensors="pt")
    with torch.no_grad():
        states = AutoModel.from_pretrained(path)(**tokens)[0]
    mask = tokens["attention_mask"].unsqueeze(-1).float()
    pooled = (states * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=-1).numpy()


def test_the_combined_candidate_is_the_regression_on_tfidf_and_embeddings(tickets):
    root, _, _ = tickets
    registry = Registry(Storage(root))
    combined = registry.get("tickets", 3)
    meta = combined.metadata
    assert (meta["runtime"], meta["examples"]) == ("lexical", registry.get("tickets", 1)
                                                   .metadata["examples"])
    splits = meta["splits_uri"]
    train, valid, test = (pd.read_parquet(f"{splits}/{s}.parquet")
                          for s in ("train", "valid", "test"))
    # max_length: the 95th percentile of the training texts' token counts, rounded up to 8.
    tokenizer = load_tokenizer(encoder_path(DEFAULT_ENCODER))
    counts = [len(tokenizer(t)["input_ids"]) for t in train["text"]]
    max_length = max(16, 8 * int(np.ceil(np.percentile(counts, 95) / 8)))
    model, _ = registry.load("tickets", 3)
    assert (model.encoder.name, model.encoder.max_length) == (DEFAULT_ENCODER, max_length)
    # Reloaded, it gives what scikit-learn's regression gives on the TF-IDF columns beside
    # embeddings computed here, fitted on the same training rows (it embeds test texts itself).
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    embedded = {name: reference_embeddings(split["text"].tolist(), max_length)
                for name, split in (("train", train), ("valid", valid), ("test", test))}
    reference = LogisticRegression(max_iter=2000).fit(
        np.hstack([vectorizer.fit_transform(train["text"]).toarray(), embedded["train"]]),
        train["label"])

    def columns(split, name):
        return np.hstack([vectorizer.transform(split["text"]).toarray(), embedded[name]])

    np.testing.assert_allclose(model.predict_proba(test["text"]),
                               reference.predict_proba(columns(test, "test")), atol=1e-6)
    assert meta["metrics"]["valid_macro_f1"] == pytest.approx(
        f1_score(valid["label"], reference.predict(columns(valid, "valid")), average="macro"))
    # The embedding columns carry weight: without them the scores move.
    dims = embedded["train"].shape[1]
    assert model.coef.shape[1] == len(vectorizer.vocabulary_) + dims
    assert np.abs(model.coef[:, -dims:]).sum() > 0.1 * np.abs(model.coef).sum()


def test_the_encoder_fine_tunes_data_parallel_and_registers_its_best_epoch(tmp_path):
    """Real text (manual page summaries by section), the encoder trained by two DDP workers:
    its own learning rate with warmup and linear decay, early stopping, max_length from the
    data."""
    pages = man_page_summaries(20)
    pages.to_csv(tmp_path / "man.csv", index=False)
    root = str(tmp_path / "root")
    result = train_job(load_config(TrainConfig, "configs/train_text.yaml", [
        f"storage.root={root}", "tracking.mode=disabled", "model_name=man_tuned",
        f"text.path={tmp_path / 'man.csv'}", "text.text_columns=[text]",
        "text.label_column=label", "text.train_encoder=true", "text.patience=1",
        "trainer.keep_checkpoints=null", "model.epochs=6", "model.batch_size=16"]))
    meta, history = result.version.metadata, result.history
    train = pd.read_parquet(f"{meta['splits_uri']}/train.parquet")
    # max_length: the 95th percentile of the training texts' token counts, rounded up to 8.
    tokenizer = load_tokenizer(encoder_path(DEFAULT_ENCODER))
    counts = [len(tokenizer(t)["input_ids"]) for t in train["text"]]
    assert meta["text"]["max_length"] == 8 * int(np.ceil(np.percentile(counts, 95) / 8))
    # Stopped one epoch (the patience) after its best, unless the epochs ran out first; the
    # registered weights and metrics are the best epoch's (only improving epochs checkpoint).
    best = int(history["epoch"].iloc[-1])
    assert history["valid_macro_f1"].is_monotonic_increasing
    assert meta["epochs_run"] == min(best + 2, 6)
    assert meta["metrics"]["valid_macro_f1"] == pytest.approx(history["valid_macro_f1"].max())
    # The encoder trained (its weights are stored and moved from the package's), except the
    # pooler, which mean pooling never uses (DDP refuses parameters that get no gradient).
    stored = load_file(f"{result.version.uri}/model.safetensors")
    packaged = TextClassifier(DEFAULT_ENCODER, 5, [128]).state_dict()
    query = "encoder.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(stored[query], packaged[query])
    pooler = "encoder.pooler.dense.weight"
    assert torch.equal(stored[pooler], packaged[pooler])
    # The optimizer's two groups: the head at model.lr, the encoder at text.encoder_lr, both
    # on the linear warmup-then-decay schedule at the step the best epoch ended.
    checkpoint = sorted(glob.glob(f"{root}/checkpoints/{result.run_name}/checkpoint_*/"))[-1]
    state = torch.load(f"{checkpoint}/state.pt", weights_only=True)
    groups = state["optimizer"]["param_groups"]
    assert [g["initial_lr"] for g in groups] == [0.003, 5e-5]
    per_epoch = int(np.ceil(len(train) // 2 / 16))
    total, step = 6 * per_epoch, (best + 1) * per_epoch
    warmup = int(0.1 * total)
    assert state["schedule"]["last_epoch"] == step
    assert [g["lr"] for g in groups] == pytest.approx(
        [g["initial_lr"] * (total - step) / (total - warmup) for g in groups])


def test_promotion_needs_the_behavioural_checks_to_pass(tickets):
    root, folder, result = tickets
    common = [f"storage.root={root}", "tracking.mode=disabled", "model_name=tickets",
              "metric=macro_f1", "min_value=0.5"]
    # A check expecting the wrong label cannot pass: refused, with the reason.
    with pytest.raises(SlipwayError, match="behavioural checks failed: min_functionality 67%"):
        promote_job(load_config(PromoteConfig, None, [
            *common, f"behaviour_checks={checks_file(folder, 'account')}"]))
    assert "champion" not in Registry(Storage(root)).aliases("tickets")
    # Accepted, with W&B on: promote's run survives the evaluation run it starts inside.
    assert promote_job(load_config(PromoteConfig, None, [
        *common, "tracking.mode=offline",
        f"behaviour_checks={checks_file(folder, 'bug')}"])) == result.version.version
    # Run ids of runs started in the same second sort by their random suffix: order by start.
    manifests = [json.loads(open(f).read()) for f in Storage(root).list_files("runs", "promote")]
    assert max(manifests, key=lambda m: m["started_at"])["metrics"]["passed"] == 1
