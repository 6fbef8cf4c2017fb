"""A labeling round through a real Label Studio server (its own venv and SQLite, reached through
its SDK), from what the topic classifier served to a retrained model judged against the champion;
and the same round through files, which must accept exactly the same labels."""

from __future__ import annotations

import io
import json
import shutil
from datetime import datetime, timezone

import numpy as np
import pandas as pd

from jobs.accept_labels import AcceptConfig
from jobs.accept_labels import main as accept_job
from jobs.labeling_round import RoundConfig
from jobs.labeling_round import main as labeling_round
from jobs.select_for_labeling import SelectConfig
from jobs.select_for_labeling import main as select_job
from jobs.simulate_annotators import SimulateConfig
from jobs.simulate_annotators import main as simulate_job
from slipway.config import load_config
from slipway.labeling import label_sets
from slipway.labeling.rounds import item_id
from slipway.predictions import log_row, write_rows
from slipway.registry import Registry
from slipway.storage import Storage

PROJECT = "article_topic"


def served_root(platform_root: str, root: str) -> pd.DataFrame:
    """A root with the platform's articles and topic models, where the champion classified every
    article title through the app's log (one request per 50 titles); the articles."""
    for folder in ("curated", f"models/{PROJECT}"):
        shutil.copytree(f"{platform_root}/{folder}", f"{root}/{folder}")
    storage = Storage(root)
    model, mv = Registry(storage).load(PROJECT)
    articles = pd.read_parquet(f"{root}/curated/articles")
    titles = articles["title"].tolist()
    probs = model.predict_proba(titles)
    classes = mv.metadata["labels"]
    now = datetime.now(timezone.utc)
    answers = [{"label": classes[p.argmax()],
                "probabilities": dict(zip(classes, map(float, p), strict=True))} for p in probs]
    write_rows(storage, [
        log_row(f"r{start}", now, "/v1/classify", "k", PROJECT, mv.version,
                titles[start:start + 50], answers[start:start + 50], 5.0)
        for start in range(0, len(titles), 50)], "test")
    return articles


def test_a_round_through_label_studio_retrains_the_classifier_and_equals_the_file_round(
        label_studio, platform_root, ray_session, tmp_path):
    studio_root, file_root = str(tmp_path / "studio"), str(tmp_path / "files")
    articles = served_root(platform_root, studio_root)
    served_root(platform_root, file_root)
    truth = dict(zip(articles["title"].map(item_id), articles["topic"], strict=True))
    registry = Registry(Storage(studio_root))
    champion_before = registry.get(PROJECT).version

    # The retraining as the lexical model (TF-IDF and logistic regression in one Ray task),
    # layered over the shipped config: the round's step is under test here, the Ray Train text
    # model in tests/model/test_text.py.
    small = tmp_path / "train_small.yaml"
    small.write_text("text: {model: lexical}\n")
    out = labeling_round(load_config(RoundConfig, "configs/labeling_round.yaml", [
        f"storage.root={studio_root}", "tracking.mode=disabled", "start_label_studio=null",
        f"label_studio.url={label_studio.url}", f"train=[configs/train_text.yaml, {small}]"]))
    storage = Storage(studio_root)
    name = out["picks"].attrs["round"]
    folder = ("labeling", PROJECT, "rounds", name)
    meta = storage.read_json(*folder, "round.json")
    assert meta["label_studio"]["url"] == label_studio.url

    # Label Studio holds the round's tasks, each with the model's answer and served score as
    # its prediction, and three annotations made by three Label Studio users.
    exported = storage.read_json(*folder, "export.json")
    picks = out["picks"].set_index("item")
    assert sorted(t["data"]["item"] for t in exported) == sorted(picks.index)
    for task in exported:
        item = task["data"]["item"]
        who = sorted(a["completed_by"]["email"] for a in task["annotations"])
        assert who == sorted(f"{n}@annotators.slipway" for n in ("average", "careful", "sloppy"))
        assert len({a["completed_by"]["id"] for a in task["annotations"]}) == 3
        if picks.at[item, "reason"] == "uncertain":
            served = np.asarray(picks.at[item, "probabilities"])
            prediction = task["predictions"][0]
            assert prediction["score"] == float(served.max())
            assert prediction["model_version"] == f"{PROJECT}@{champion_before}"
            chosen = prediction["result"][0]["value"]["choices"][0]
            assert chosen == meta["classes"][int(served.argmax())]

    # The same round through files (tasks.json out, a JSON export in) accepts the same labels.
    picks_files = select_job(load_config(SelectConfig, "configs/select_for_labeling.yaml", [
        f"storage.root={file_root}", "tracking.mode=disabled", f"round={name}"]))
    assert picks_files["item"].tolist() == out["picks"]["item"].tolist()
    simulate_job(load_config(SimulateConfig, "configs/simulate_annotators.yaml", [
        f"storage.root={file_root}", "tracking.mode=disabled"]))
    by_file = accept_job(load_config(AcceptConfig, "configs/accept_labels.yaml", [
        f"storage.root={file_root}", "tracking.mode=disabled",
        f"export=labeling/{PROJECT}/rounds/{name}/simulated_export.json"]))
    by_studio = out["accepted"]
    assert by_file["label_set_version"] == by_studio["label_set_version"] == 2
    named = json.dumps(by_studio["agreement"]).replace("@annotators.slipway", "")
    assert named == json.dumps(by_file["agreement"])  # Label Studio users by their emails
    studio_labels = label_sets.read(storage, PROJECT, 2)[0]
    file_labels = label_sets.read(Storage(file_root), PROJECT, 2)[0]
    columns = ["item", "text", "label", "consensus_quality", "source_round"]
    pd.testing.assert_frame_equal(studio_labels[columns], file_labels[columns])

    # Version 1 is the champion's training data; version 2 replaces the labels of the accepted
    # round items, and its consensus labels are right as often as the truth says.
    base, manifest = label_sets.read(storage, PROJECT, 1)
    assert len(base) == len(articles) and manifest["parent"] is None
    assert (base["label"].to_numpy() == base["item"].map(truth).to_numpy()).all()
    v2 = label_sets.read(storage, PROJECT, 2)[1]
    assert v2["parent"] == 1 and v2["relabelled"] == by_studio["accepted"] and v2["added"] == 0
    accepted = studio_labels[studio_labels["source_round"] == name]
    assert len(accepted) == by_studio["accepted"] > 0
    assert (accepted["label"] == accepted["item"].map(truth)).mean() >= 0.9

    # The issue report covers the new version and lists rows of it.
    report = pd.read_csv(io.BytesIO(storage.read_bytes(
        "labeling", PROJECT, "label_sets", "0002", "issues.csv")))
    assert set(report["item"]) <= set(studio_labels["item"]) and "accept" in report

    # The retrained model's lineage names label set version 2; the gate judged it against the
    # champion and the registry shows its decision.
    trained = out["trained"].version
    assert f"labeling/{PROJECT}/label_sets/0002/labels.parquet" in trained.metadata[
        "data_versions"]
    assert trained.metadata["examples"]["train"] + trained.metadata["examples"]["valid"] + \
        trained.metadata["examples"]["test"] == len(studio_labels)
    assert registry.get(PROJECT).version == (out["champion"] or champion_before)
