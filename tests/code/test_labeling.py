"""Label quality on real text (this machine's manual-page summaries, labelled by section):
agreement statistics against their textbook formulas, CROWDLAB's consensus against majority vote
with simulated annotators of known noise, and injected label errors found by cleanlab."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from itertools import combinations
from xml.etree import ElementTree

import numpy as np
import pandas as pd
import pytest
from scipy.stats import entropy
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import normalize

from jobs.accept_labels import AcceptConfig
from jobs.accept_labels import main as accept_job
from jobs.find_label_issues import IssuesConfig
from jobs.find_label_issues import main as issues_job
from jobs.select_for_labeling import SelectConfig
from jobs.select_for_labeling import main as select_job
from slipway.cli import JobFailed
from slipway.config import load_config
from slipway.data.man_pages import man_page_summaries, summary
from slipway.errors import SlipwayError
from slipway.labeling import label_sets, simulated
from slipway.labeling.issues import data_issues, label_issues, out_of_fold_probabilities
from slipway.labeling.quality import agreement, consensus, gold_accuracy, label_matrix
from slipway.labeling.rounds import item_id
from slipway.labeling.selection import SelectionSettings, select, uncertainty
from slipway.labeling.tasks import choice, labeling_config, read_annotations, tasks
from slipway.predictions import log_row, write_rows
from slipway.storage import Storage

NOISE = {"careful": 0.05, "average": 0.15, "sloppy": 0.40}


@pytest.fixture(scope="module")
def pages():
    """600 summaries, 120 per section, as text features (TF-IDF) and class indices."""
    df = man_page_summaries(120, seed=0)
    classes = sorted(df["label"].unique())
    features = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2)).fit_transform(df["text"])
    return df, classes, features, df["label"].map(classes.index).to_numpy()


def annotate(truth: np.ndarray, classes: list[str], seed: int) -> pd.DataFrame:
    return simulated.annotate(np.arange(len(truth)), truth, classes, NOISE, seed)


def test_summaries_are_read_from_man_and_mdoc_pages():
    man = '.TH LS 1\n.SH "NAME"\nls \\- list \\fBdirectory\\fR contents\n.SH SYNOPSIS\n'
    assert summary(man) == "list directory contents"
    assert summary(".Dd May 1\n.Nm cat\n.Nd concatenate and print files\n") == \
        "concatenate and print files"
    assert summary(".TH X 1\n.SH NAME\nx \\- y\n") is None  # too short to be a summary


def test_agreement_statistics_match_their_textbook_formulas():
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 3, 80)
    classes = ["a", "b", "c"]
    annotations = annotate(truth, classes, seed=2)
    matrix = label_matrix(annotations, classes)
    stats = agreement(matrix, classes)
    codes = matrix.to_numpy(int)
    for (i, a), (j, b) in combinations(enumerate(matrix.columns), 2):  # Cohen: (po - pe)/(1 - pe)
        po = np.mean(codes[:, i] == codes[:, j])
        pe = sum(np.mean(codes[:, i] == k) * np.mean(codes[:, j] == k) for k in range(3))
        assert stats["cohen_kappa"][f"{a}|{b}"] == pytest.approx((po - pe) / (1 - pe))
    counts = np.stack([(codes == k).sum(axis=1) for k in range(3)], axis=1)  # items x classes
    n = codes.shape[1]  # Fleiss: mean pairwise agreement per item against chance
    p_item = ((counts * (counts - 1)).sum(axis=1) / (n * (n - 1))).mean()
    p_chance = ((counts.sum(axis=0) / counts.sum()) ** 2).sum()
    assert stats["fleiss_kappa"] == pytest.approx((p_item - p_chance) / (1 - p_chance))
    # Krippendorff (nominal, no missing values): 1 - observed / expected disagreement from the
    # coincidence matrix; per class on that class against the rest.
    def alpha_by_hand(values: np.ndarray, k: int) -> float:
        coincidence = np.zeros((k, k))
        for row in values:
            for x, y in combinations(range(n), 2):
                coincidence[row[x], row[y]] += 1 / (n - 1)  # each ordered pair of values
                coincidence[row[y], row[x]] += 1 / (n - 1)
        totals, total = coincidence.sum(axis=1), coincidence.sum()
        observed = coincidence.sum() - np.trace(coincidence)
        expected = (totals.sum() ** 2 - (totals ** 2).sum()) / (total - 1)
        return 1 - observed / expected

    assert stats["krippendorff_alpha"] == pytest.approx(alpha_by_hand(codes, 3))
    for k, name in enumerate(classes):
        assert stats["krippendorff_alpha_per_class"][name] == pytest.approx(
            alpha_by_hand((codes == k).astype(int), 2))


def test_crowdlab_beats_majority_vote_and_ranks_the_annotators_on_real_text(pages):
    df, classes, features, truth = pages
    annotations = annotate(truth, classes, seed=0)
    matrix = label_matrix(annotations, classes)
    majority = matrix.mode(axis=1)[0].to_numpy(int)
    # The model CROWDLAB weighs in was trained, out of fold, on the majority labels only.
    result = consensus(matrix, out_of_fold_probabilities(features, majority))
    crowdlab = np.mean(result.items["label"].to_numpy() == truth)
    vote = np.mean(result.items["majority"].to_numpy() == truth)
    assert crowdlab >= vote > 0.9
    quality = result.annotators["quality"]
    assert quality["careful"] > quality["average"] > quality["sloppy"]
    # Items whose consensus is weak are where its mistakes gather: worth another label.
    weak = result.weak(0.5)
    wrong = result.items["label"].to_numpy() != truth
    assert 0 < len(weak) < len(truth) and wrong[matrix.index.get_indexer(weak)].mean() > \
        2 * wrong.mean()
    # Gold items score each annotator as the share they got right.
    gold = pd.Series(np.asarray(classes)[truth[:100]], index=range(100))
    accuracy = gold_accuracy(annotations, gold)
    for name in NOISE:
        mine = annotations[(annotations["annotator"] == name) & (annotations["item"] < 100)]
        assert accuracy[name] == pytest.approx(np.mean(mine["label"].to_numpy() == gold.values))


def test_injected_label_errors_are_found_far_above_chance(pages):
    df, classes, features, truth = pages
    rng = np.random.default_rng(3)
    noisy = simulated.flipped(truth, 0.10, len(classes), rng)
    injected = set(np.flatnonzero(noisy != truth))
    issues = label_issues(noisy, out_of_fold_probabilities(features, noisy), classes)
    found = set(issues["row"])
    precision, recall = len(found & injected) / len(found), len(found & injected) / len(injected)
    # Reviewing as many random rows would find injected errors at their share (about 10%).
    assert precision > 2.5 * len(injected) / len(truth) and recall > 0.6
    assert issues["quality"].is_monotonic_increasing  # likeliest mistakes first
    assert set(issues["given"]) <= set(classes) and (issues["given"] != issues["suggested"]).any()


def test_planted_outliers_and_near_duplicates_are_found(pages):
    df, classes, features, truth = pages
    # Dense unit vectors of the summaries (LSA), eight of them sent again (the same text with a
    # full stop added embeds the same), and six points far from every summary and each other.
    lsa = normalize(TruncatedSVD(64, random_state=0).fit_transform(features))
    rng = np.random.default_rng(5)
    copies = rng.choice(len(df), 8, replace=False)
    again = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2)).fit(df["text"]).transform(
        df["text"].to_numpy()[copies] + ".")
    assert np.allclose(again.toarray(), features[copies].toarray())
    far = np.eye(6)  # each on an axis of its own: orthogonal to every other row
    x = np.block([[np.concatenate([lsa, lsa[copies]]), np.zeros((len(lsa) + 8, 6))],
                  [np.zeros((6, lsa.shape[1])), far]])
    labels = np.concatenate([truth, truth[copies], rng.integers(0, len(classes), len(far))])
    found = data_issues(x, labels)
    duplicates = found[found["issue"] == "near_duplicate"].set_index("row")["duplicate_of"]
    for k, row in enumerate(copies):  # each copy is in its original's set, and back
        assert len(df) + k in duplicates.loc[row] and row in duplicates.loc[len(df) + k]
    outliers = set(found.loc[found["issue"] == "outlier", "row"])
    planted = set(range(len(df) + len(copies), len(x)))
    assert planted <= outliers and len(outliers) <= 3 * len(planted)
    assert found.groupby("issue")["score"].apply(lambda x: x.is_monotonic_increasing).all()


def test_a_label_outside_the_set_or_a_repeated_annotation_names_the_item():
    classes = ["a", "b"]
    bad = pd.DataFrame({"item": [1, 2], "annotator": ["x", "x"], "label": ["a", "zzz"]})
    with pytest.raises(SlipwayError, match=r"item 2: label 'zzz' by x is not in the label set"):
        label_matrix(bad, classes)
    twice = pd.DataFrame({"item": [1, 1], "annotator": ["x", "x"], "label": ["a", "b"]})
    with pytest.raises(SlipwayError, match="item 1: x labelled it more than once"):
        label_matrix(twice, classes)


def test_selection_spends_the_budget_on_gold_relabels_and_diverse_uncertain_items(pages):
    df, classes, features, truth = pages
    # A model trained on 200 labelled summaries scores the other 400, the pool; ten copies of
    # each of its five most uncertain items are planted in the pool (near-duplicate traffic).
    order = np.random.default_rng(5).permutation(len(truth))
    known, pool = order[:200], order[200:]
    model = LogisticRegression(max_iter=2000).fit(features[known], truth[known])
    probs = model.predict_proba(features[pool])
    margin = uncertainty(probs, "margin")
    top2 = np.sort(probs, axis=1)[:, -2:]
    assert np.allclose(margin, 1 - top2[:, 1] + top2[:, 0])
    assert np.allclose(uncertainty(probs, "entropy"), entropy(probs.T) / np.log(len(classes)))
    dense = features[pool].toarray()
    worst = np.argsort(-margin)[:5]
    items = np.concatenate([pool, np.arange(10_000, 10_050)])
    pool_probs = np.concatenate([probs, np.repeat(probs[worst], 10, axis=0)])
    pool_x = np.concatenate([dense, np.repeat(dense[worst], 10, axis=0)])
    copies = {pool[w]: set(range(10_000 + 10 * k, 10_010 + 10 * k)) for k, w in enumerate(worst)}
    # Two annotators on the labelled 200: they disagree on the first 20 items.
    rng = np.random.default_rng(0)
    second = truth[known].copy()
    second[:20] = (second[:20] + rng.integers(1, len(classes), 20)) % len(classes)
    labelled = pd.DataFrame({"x": truth[known], "y": second}, index=known).astype(float)
    in_flight = set(pool[:60])
    settings = SelectionSettings(budget=50, relabel_share=0.2, gold_share=0.1)
    picked = select(items, pool_probs, pool_x, settings, exclude=in_flight, labelled=labelled,
                    labelled_probs=out_of_fold_probabilities(features[known], truth[known]),
                    gold=known[100:])
    reasons = picked["reason"].value_counts().to_dict()
    assert len(picked) == 50 and reasons == {"gold": 5, "relabel": 10, "uncertain": 35}
    assert picked["item"].is_unique and not set(picked["item"]) & in_flight
    assert set(picked.loc[picked["reason"] == "gold", "item"]) <= set(known[100:])
    # Another label goes first to the items the two annotators disagree on.
    assert set(picked.loc[picked["reason"] == "relabel", "item"]) <= set(known[:20])
    # Uncertain picks: most uncertain first, but at most one of each group of copies, where
    # the 35 most uncertain items of the pool would be almost all copies.
    uncertain = picked[picked["reason"] == "uncertain"]
    assert uncertain["score"].is_monotonic_decreasing
    for original, group in copies.items():
        assert len(({original} | group) & set(uncertain["item"])) <= 1
    by_score = items[np.argsort(-uncertainty(pool_probs, "margin"), kind="stable")][:35]
    assert sum(i >= 10_000 for i in by_score) >= 30
    # The next round never sends again what is in flight.
    again = select(items, pool_probs, pool_x, settings,
                   exclude=in_flight | set(picked["item"]), gold=known[100:])
    assert not set(again["item"]) & (in_flight | set(picked["item"]))


def test_tasks_round_trip_through_label_studio_json_and_bad_exports_name_the_task():
    classes = ["billing", "bug", 'Q&A "misc"']
    config = ElementTree.fromstring(labeling_config(classes))
    assert [c.get("value") for c in config.iter("Choice")] == classes
    assert config.find("Choices").get("toName") == config.find("Text").get("name")
    items = pd.DataFrame({"item": [7, 8, 9], "text": ["refund me", "it crashes", "hello"]})
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]])
    made = tasks(items, probs, classes, "article_topic@3")
    assert [t["predictions"][0]["result"][0]["value"]["choices"] for t in made] == \
        [["billing"], ["bug"], ['Q&A "misc"']]
    assert [t["predictions"][0]["score"] for t in made] == [0.7, 0.8, 0.4]
    # What Label Studio exports after two annotators (one cancelled once; task 3 still open).
    given = pd.DataFrame({"item": ["7", "7", "8", "8"], "annotator": ["1", "a@x.io", "1", "a@x.io"],
                          "label": ["billing", "billing", "bug", 'Q&A "misc"']})
    exported = json.loads(json.dumps([{**t, "id": i + 1, "annotations": []}
                                      for i, t in enumerate(made)]))
    for k, row in enumerate(given.itertuples()):
        by = 1 if row.annotator == "1" else {"id": 2, "email": "a@x.io"}
        task = next(t for t in exported if t["data"]["item"] == row.item)
        task["annotations"].append({"id": 100 + k, "completed_by": by, "was_cancelled": False,
                                    "created_at": "2026-12-01T10:00:00Z",
                                    "result": [choice(row.label)]})
    exported[0]["annotations"].append({"id": 99, "completed_by": 1, "was_cancelled": True,
                                       "result": []})
    read = read_annotations(exported, classes)
    assert read[["item", "annotator", "label"]].equals(given)
    assert read["task"].tolist() == [1, 1, 2, 2]

    wrong = json.loads(json.dumps(exported))
    wrong[1]["annotations"][0]["result"] = [choice("refund")]
    with pytest.raises(SlipwayError, match=r"task 2: label 'refund' is not in the label set"):
        read_annotations(wrong, classes)
    no_item = json.loads(json.dumps(exported))
    del no_item[2]["data"]["item"]
    with pytest.raises(SlipwayError, match="task 3: no data.item"):
        read_annotations(no_item, classes)
    empty = json.loads(json.dumps(exported))
    empty[0]["annotations"][0]["result"] = []
    with pytest.raises(SlipwayError, match="task 1: annotation 100 has no single choice"):
        read_annotations(empty, classes)


def test_a_labeling_round_picks_from_served_answers_and_never_twice(pages, tmp_path):
    df, classes, features, truth = pages
    root = str(tmp_path / "root")
    storage = Storage(root)
    # The app classified 300 summaries (probabilities of a model trained on the other 300);
    # ten of them were sent twice.
    order = np.random.default_rng(7).permutation(len(truth))
    model = LogisticRegression(max_iter=2000).fit(features[order[300:]], truth[order[300:]])
    probs = model.predict_proba(features[order[:300]])
    texts = df["text"].to_numpy()[order[:300]].tolist()
    now = datetime.now(timezone.utc)
    rows = [log_row(f"r{i}", now, "/v1/classify", "k", "article_topic", 3, [text],
                    [{"label": classes[p.argmax()],
                      "probabilities": dict(zip(classes, map(float, p), strict=True))}], 5.0)
            for i, (text, p) in enumerate([*zip(texts, probs, strict=True),
                                           *zip(texts[:10], probs[:10], strict=True)])]
    write_rows(storage, rows, "test")
    gold_path = tmp_path / "gold.csv"
    df.iloc[order[300:310]][["text", "label"]].to_csv(gold_path, index=False)

    def run(name: str, *extra: str):
        return select_job(load_config(SelectConfig, None, [
            f"storage.root={root}", "tracking.mode=disabled", f"round={name}",
            "selection.budget=20", "selection.gold_share=0.25", f"gold={gold_path}", *extra]))

    first = run("one")
    assert first["reason"].value_counts().to_dict() == {"uncertain": 15, "gold": 5}
    made = storage.read_json("labeling", "article_topic", "rounds", "one", "tasks.json")
    assert len(made) == 20 and len({t["data"]["item"] for t in made}) == 20
    by_text = {t: p for t, p in zip(texts, probs, strict=True)}
    for task in made:
        if task["data"]["text"] in by_text:  # the model's answer as pre-annotation
            best = by_text[task["data"]["text"]].argmax()
            assert task["predictions"][0]["result"][0]["value"]["choices"] == [classes[best]]
        else:  # a gold item: its known label kept for scoring, nothing shown
            assert "predictions" not in task
            gold = first.set_index("item").loc[task["data"]["item"]]
            assert gold["reason"] == "gold" and gold["gold_label"] in classes
    # The most uncertain served text comes first (margin computed here from the logged answers).
    top2 = np.sort(probs, axis=1)[:, -2:]
    most = texts[int(np.argmax(1 - top2[:, 1] + top2[:, 0]))]
    assert first[first["reason"] == "uncertain"].iloc[0]["item"] == item_id(most)
    config = ElementTree.fromstring(storage.read_bytes(
        "labeling", "article_topic", "rounds", "one", "config.xml").decode())
    assert [c.get("value") for c in config.iter("Choice")] == classes

    second = run("two")  # the first round is in flight: none of its items again
    assert not set(second["item"]) & set(first["item"])
    with pytest.raises(JobFailed, match="round 'two' of article_topic exists"):
        run("two")

    # Three annotators of known noise label round one in Label Studio; its export comes back.
    label_of = dict(zip(df["text"], df["label"], strict=True))
    truth = np.array([classes.index(label_of[t["data"]["text"]]) for t in made])
    given = simulated.annotate(np.array([t["data"]["item"] for t in made]), truth, classes,
                               NOISE, seed=4)
    exported = [{**t, "id": i + 1, "annotations": [
        {"id": 1000 + j, "completed_by": row.annotator, "result": [choice(row.label)],
         "was_cancelled": False, "created_at": "2026-12-01T12:00:00Z"}
        for j, row in enumerate(given[given["item"] == t["data"]["item"]].itertuples())]}
        for i, t in enumerate(made)]
    export = tmp_path / "export.json"
    broken = json.loads(json.dumps(exported))
    broken[3]["annotations"][0]["result"] = [choice("poetry")]
    export.write_text(json.dumps(broken))

    def accept():
        return accept_job(load_config(AcceptConfig, None, [
            f"storage.root={root}", "tracking.mode=disabled", "round=one",
            f"export={export}", "min_quality=0.3"]))

    with pytest.raises(SlipwayError, match="task 4: label 'poetry' is not in the label set"):
        accept()
    assert label_sets.versions(storage, "article_topic") == []  # nothing accepted from it
    export.write_text(json.dumps(exported))
    summary = accept()
    labels, manifest = label_sets.read(storage, "article_topic", summary["label_set_version"])
    uncertain = set(first.loc[first["reason"] == "uncertain", "item"])
    assert set(labels["item"]) <= uncertain and len(labels) == summary["accepted"] > 0
    assert len(labels) + len(summary["weak"]) == len(uncertain)
    task_of = {t["data"]["item"]: t["id"] for t in exported}  # provenance: who, which task
    assert (labels["annotated_by"] == "average,careful,sloppy").all()
    assert labels["task"].tolist() == labels["item"].map(task_of).tolist()
    assert (labels["annotated_at"] == "2026-12-01T12:00:00Z").all()
    # The accepted consensus is right at least as often as a majority vote of the same items.
    right = {i: classes[k] for i, k in zip((t["data"]["item"] for t in made), truth,
                                           strict=True)}
    votes = given[given["item"].isin(labels["item"])].groupby("item")["label"].agg(
        lambda x: x.mode().iloc[0])
    assert np.mean(labels["label"].to_numpy() == labels["item"].map(right).to_numpy()) >= \
        np.mean(votes.to_numpy() == votes.index.map(right).to_numpy())
    # Gold accuracy per annotator, as counted here from the export.
    gold = first[first["reason"] == "gold"].set_index("item")["gold_label"]
    on_gold = given[given["item"].isin(gold.index)]
    for name, share in summary["gold_accuracy"].items():
        mine = on_gold[on_gold["annotator"] == name]
        assert share == pytest.approx(np.mean(mine["label"].to_numpy()
                                              == gold.loc[mine["item"]].to_numpy()))
    assert manifest["agreement"]["krippendorff_alpha"] == summary["agreement"][
        "krippendorff_alpha"] and manifest["round"] == "one"

    # Round three gives another label to items of the accepted round one whose annotations
    # disagree (ActiveLab), never to round two's items (in flight); two new annotators label it
    # and each relabelled item is judged on its five annotations, new items on their two.
    third = run("three", "selection.relabel_share=0.25")
    relabel = third.loc[third["reason"] == "relabel", "item"]
    assert len(relabel) == 5 and set(relabel) <= uncertain and not set(third["item"]) & set(
        second["item"])
    spread = given.groupby("item")["label"].nunique()
    assert (spread.loc[relabel] > 1).all() and (spread.loc[list(uncertain)] > 1).sum() >= 5
    made3 = storage.read_json("labeling", "article_topic", "rounds", "three", "tasks.json")
    new_items = {t["data"]["item"]: t["data"]["text"] for t in made3}
    first_texts = {t["data"]["item"]: t["data"]["text"] for t in made}
    assert all(new_items[i] == first_texts[i] for i in relabel)
    truth3 = np.array([classes.index(label_of[new_items[t["data"]["item"]]]) for t in made3])
    given3 = simulated.annotate(np.array(list(new_items)), truth3, classes,
                                {"fourth": 0.05, "fifth": 0.10}, seed=5)
    export.write_text(json.dumps([{**t, "id": i + 1, "annotations": [
        {"id": 1000 + j, "completed_by": row.annotator, "result": [choice(row.label)]}
        for j, row in enumerate(given3[given3["item"] == t["data"]["item"]].itertuples())]}
        for i, t in enumerate(made3)]))
    third_summary = accept_job(load_config(AcceptConfig, None, [
        f"storage.root={root}", "tracking.mode=disabled", f"export={export}",
        "min_quality=0"]))  # the newest round not yet accepted: three (two is in flight)
    assert third_summary["round"] == "three"
    labels3 = label_sets.read(storage, "article_topic", third_summary["label_set_version"])[0]
    now_labelled = labels3[labels3["source_round"] == "three"].set_index("item")["annotators"]
    assert (now_labelled.loc[relabel] == 5).all()
    assert (now_labelled.drop(relabel, errors="ignore") == 2).all() and len(now_labelled) > 5


def test_accepted_labels_become_immutable_versions_with_their_parent(tmp_path):
    storage = Storage(str(tmp_path / "root"))
    first = pd.DataFrame({"item": [f"i{k}" for k in range(10)],
                          "text": [f"t{k}" for k in range(10)],
                          "label": ["a"] * 6 + ["b"] * 4, "quality": 0.9})
    assert label_sets.accept(storage, "topics", first, agreement={"fleiss_kappa": 0.7}) == 1
    # Round two: five new items and two relabelled ones.
    second = pd.DataFrame({"item": ["i0", "i1", *(f"n{k}" for k in range(5))],
                           "text": ["t0", "t1", *(f"u{k}" for k in range(5))],
                           "label": ["b", "b", "a", "a", "c", "c", "c"], "quality": 0.8})
    assert label_sets.accept(storage, "topics", second) == 2
    labels, manifest = label_sets.read(storage, "topics")
    assert manifest["version"] == 2 and manifest["parent"] == 1
    assert (manifest["rows"], manifest["added"], manifest["relabelled"]) == (15, 5, 2)
    assert manifest["counts"] == {"a": 6, "b": 6, "c": 3} == labels["label"].value_counts(
        ).sort_index().to_dict()
    assert labels.set_index("item").loc[["i0", "i1", "i2"], "label"].tolist() == ["b", "b", "a"]
    old, old_manifest = label_sets.read(storage, "topics", 1)  # unchanged by version 2
    assert old.equals(first) and old_manifest["agreement"] == {"fleiss_kappa": 0.7}
    with pytest.raises(SlipwayError, match=r"lack columns \['text'\]"):
        label_sets.accept(storage, "topics", second.drop(columns="text"))
    with pytest.raises(SlipwayError, match="item i0: accepted twice"):
        label_sets.accept(storage, "topics", pd.concat([second, second.iloc[:1]]))
    with pytest.raises(SlipwayError, match=r"no label set version 7; versions: \[1, 2\]"):
        label_sets.read(storage, "topics", 7)
    assert label_sets.versions(storage, "topics") == [1, 2]  # the refused ones wrote nothing


def test_a_reviewed_issue_report_fixes_the_accepted_labels_and_drops_the_accepted_rows(tmp_path):
    root = str(tmp_path / "root")
    storage = Storage(root)
    base = pd.DataFrame({"item": [f"i{k}" for k in range(6)], "text": [f"t{k}" for k in range(6)],
                         "label": ["a", "a", "a", "b", "b", "b"]})
    label_sets.accept(storage, "p", base)
    review = tmp_path / "issues.csv"

    def apply(rows: dict) -> int:
        pd.DataFrame(rows).to_csv(review, index=False)
        return issues_job(load_config(IssuesConfig, None, [
            f"storage.root={root}", "tracking.mode=disabled", "project=p", f"apply={review}"]))

    with pytest.raises(JobFailed, match=r"suggested labels \['c'\] are not in the label set"):
        apply({"item": ["i1"], "issue": ["label"], "suggested": ["c"], "accept": ["true"]})
    with pytest.raises(JobFailed, match="no row of .* has accept=true"):
        apply({"item": ["i1"], "issue": ["label"], "suggested": ["b"], "accept": [""]})
    assert label_sets.versions(storage, "p") == [1]  # refused reviews write nothing
    version = apply({"item": ["i1", "i2", "i3", "i4", "i5"],
                     "issue": ["label", "outlier", "near_duplicate", "label", "outlier"],
                     "suggested": ["b", "", "", "a", ""],
                     "accept": ["true", "yes", "", "false", "x"]})
    labels, manifest = label_sets.read(storage, "p", version)
    assert dict(zip(labels["item"], labels["label"], strict=True)) == {
        "i0": "a", "i1": "b", "i3": "b", "i4": "b"}
    assert (manifest["parent"], manifest["relabelled"], manifest["removed"]) == (1, 1, 2)
