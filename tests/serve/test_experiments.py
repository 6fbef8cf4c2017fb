"""A/B testing on the running app: a simulated population answering with the world's true click
model tells a good ranker from a bad one, the analysis ships the winner through the registry, an
A/A test on the same app ships nothing, units keep their variant, and outcome events are
validated without losing any."""

from __future__ import annotations

import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest
import yaml

from jobs.analyze_experiment import main as analyze_job
from jobs.experiment import ExperimentConfig
from jobs.experiment import main as publish_job
from jobs.simulate_traffic import SimulateConfig
from jobs.simulate_traffic import main as simulate_job
from slipway.experiments.events import read_events
from slipway.models.lexical import LexicalTextClassifier
from slipway.predictions import read_log
from slipway.registry import Registry
from slipway.storage import Storage
from tests.model.test_llm import noop_adapter
from tests.serve.conftest import KEYS


def register_copy(registry: Registry, invert: bool) -> int:
    """The engagement champion registered again; `invert` negates its output layer (the ranker
    then ranks the likeliest clicks last)."""
    model, champion = registry.load("engagement", "champion")
    state = model.state_dict()
    *_, weight, bias = state
    if invert:
        state[weight], state[bias] = -state[weight], -state[bias]
    arch = champion.metadata["architecture"]
    return registry.register("engagement", state, arch["name"], arch["params"],
                             **champion.recorded).version


def register_lexical(registry: Registry, name: str = "article_topic") -> int:
    """A lexical (TF-IDF + logistic regression) version of `name`, fitted on its champion's
    training split and registered as jobs.train registers one, no alias moved."""
    champion = registry.get(name, "champion")
    labels, splits = champion.metadata["labels"], champion.metadata["splits_uri"]
    train = pd.read_parquet(f"{splits}/train.parquet")
    model = LexicalTextClassifier.fit(train["text"], train["label"], len(labels))
    with tempfile.TemporaryDirectory() as folder:
        model.save(folder)
        return registry.register_folder(name, folder, kind="text_classifier", runtime="lexical",
                                        task="text", labels=labels, splits_uri=splits).version


def poll(check, what: str, timeout_s: float = 120):
    """The first truthy `check()`, polled with a generous bound."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.3)
    raise AssertionError(f"{what}: not within {timeout_s:.0f}s")


def stored_events(storage: Storage, experiment: str) -> int:
    """Events stored for the experiment's exposures."""
    exposed = read_log(storage, "/v1/rank", experiment=experiment)["request_id"].to_pylist()
    return int(read_events(storage)["request_id"].isin(exposed).sum())


def rank(api, user_id: int) -> dict:
    reply = api.post("/v1/rank", json={"user_id": user_id, "article_ids": [1, 2, 3]})
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_a_better_ranker_wins_on_simulated_users_and_ships_with_sticky_variants(
        api, base_url, platform_root, monkeypatch):
    storage = Storage(platform_root)
    registry = Registry(storage)
    champion = registry.get("engagement", "champion").version
    worse, better = register_copy(registry, invert=True), register_copy(registry, invert=False)
    with open("configs/experiments/ranker_ab.yaml") as f:
        spec = yaml.safe_load(f)
    now = datetime.now(timezone.utc)
    name = f"ab-{uuid.uuid4().hex[:6]}"
    spec["storage"]["root"] = platform_root
    spec["tracking"] = {"mode": "offline"}
    # A fixed salt: the users' split is the same every run, so the SRM check cannot fail by a
    # chance split of a few hundred users (a random name's salt did, once in ~1,700 runs).
    spec["experiment"].update(
        name=name, salt="ab-fixed", start=now - timedelta(hours=1), end=now + timedelta(hours=1),
        variants=[{"name": "control", "model": f"engagement@{worse}", "weight": 0.5},
                  {"name": "better", "model": f"engagement@{better}", "weight": 0.5}],
        guardrails={"max_p99_latency_ratio": 10})  # CPU latency is noisy; not the subject here
    # Looks every 5 s; a large effect on a few hundred users: a wide mixture (tau) suits it.
    spec["analysis"].update(look_every="5s", tau=1.0)
    cfg = ExperimentConfig.model_validate(spec)
    publish_job(cfg)
    aa = cfg
    try:
        poll(lambda: rank(api, 1)["experiment"] == name, "the app follows the experiment")
        # Sticky: a user keeps the variant over requests; both variants are served.
        seen = {user: {rank(api, user)["variant"] for _ in range(3)} for user in range(1, 21)}
        assert all(len(variants) == 1 for variants in seen.values())
        assert {v for variants in seen.values() for v in variants} == {"control", "better"}
        monkeypatch.setenv("SLIPWAY_TEST_KEY", KEYS["tester"])
        sent = simulate_job(SimulateConfig(storage=cfg.storage, url=base_url, visits=400,
                                           api_key_env="SLIPWAY_TEST_KEY", seed=3))
        # The good ranker earns more clicks per visit from the same population, for real.
        assert (sent["clicks:better"] / sent["visits:better"]
                > 1.5 * sent["clicks:control"] / sent["visits:control"])
        visits = 1 + 20 * 3 + 400
        poll(lambda: read_log(storage, "/v1/rank", experiment=name).num_rows == visits,
             "every exposure is logged once")
        poll(lambda: stored_events(storage, name) >= 400 * 3, "the impressions are stored")
        summary = analyze_job(cfg)
        assert summary["decision"] == "ship" and summary["winner"] == "better"
        assert summary["units_with_several_variants"] == 0 and not summary["srm"]["flagged"]
        assert summary["metrics"]["better"]["clicks"]["relative_ci"][0] > 0
        # Shipped through the registry, with the experiment in the version's lineage.
        assert registry.aliases("engagement")["champion"] == summary["shipped_version"] == better
        history = storage.read_json("models", "engagement", "aliases.json")["history"]
        assert name in history[-1]["reason"]
        assert storage.exists("models", "engagement", "versions", f"{better:04d}", "experiments",
                              f"{name}.json")
        assert "ship" in storage.read_bytes(*summary["report"].removeprefix(
            storage.uri() + "/").split("/")).decode()
        # A/A on the same app (two copies of one ranker): nothing to ship, no SRM.
        cfg.experiment.killed = True  # the kill switch frees the route for the next one
        publish_job(cfg)
        same = register_copy(registry, invert=False)
        aa = cfg.model_copy(deep=True)
        aa.experiment.name, aa.experiment.killed = f"{name}-aa", False
        aa.experiment.salt = "aa-fixed"  # fixed split and seed: an A/A is not a coin flip here
        aa.experiment.variants[0].model = f"engagement@{better}"
        aa.experiment.variants[1].model = f"engagement@{same}"
        publish_job(aa)
        poll(lambda: rank(api, 1)["experiment"] == aa.experiment.name, "the A/A is followed")
        simulate_job(SimulateConfig(storage=cfg.storage, url=base_url, visits=300,
                                    api_key_env="SLIPWAY_TEST_KEY", seed=4))
        poll(lambda: read_log(storage, "/v1/rank", experiment=aa.experiment.name).num_rows
             == 301, "the A/A exposures are logged")
        poll(lambda: stored_events(storage, aa.experiment.name) >= 300 * 3,
             "the A/A impressions are stored")
        summary = analyze_job(aa)
        assert summary["decision"] == "keep running" and summary["winner"] is None
        assert not summary["srm"]["flagged"]
        assert not summary["metrics"]["better"]["clicks"]["significant"]
    finally:
        for experiment in (cfg, aa):  # the kill switch: everyone back to the champion
            experiment.experiment.killed = True
            publish_job(experiment)
        registry.set_alias("engagement", "champion", champion, "test: restore")

    def restored() -> bool:
        answer = rank(api, 1)
        return answer["experiment"] is None and answer["variant"] is None \
            and answer["version"] == champion

    poll(restored, "the kill switch and the restore apply")


@pytest.mark.parametrize("body, field", [
    ({"events": [{"type": "purchase", "user_id": 1}]}, "events.0.type"),
    ({"events": [{"type": "click"}]}, "give request_id"),
    ({"events": [{"type": "dwell", "user_id": 1, "value": -3}]}, "events.0.value"),
    ({"events": []}, "events"),
    ({"events": [{"type": "click", "user_id": True}]}, "events.0.user_id"),
])
def test_malformed_events_get_422_naming_the_field_and_lose_nothing(api, platform_root, body,
                                                                     field):
    marker = f"evt-{uuid.uuid4().hex[:8]}"
    good = {"events": [{"type": "impression", "request_id": marker, "user_id": 5},
                       {"type": "click", "request_id": marker, "user_id": 5}]}
    assert api.post("/v1/events", json=good).json() == {"accepted": 2}
    reply = api.post("/v1/events", json=body)
    assert reply.status_code == 422 and field in reply.json()["error"]["message"]

    def stored() -> list[str]:
        rows = read_events(Storage(platform_root))
        return sorted(rows[rows["request_id"] == marker]["type"])

    poll(lambda: len(stored()) >= 2, "the good batch is stored")
    assert stored() == ["click", "impression"]  # all of it, once


def experiment_on(route: str, name: str, model: str, control: int, treatment: int,
                  root: str) -> ExperimentConfig:
    """A live 50/50 experiment on `route` over two versions of `model`, randomised by user."""
    now = datetime.now(timezone.utc)
    return ExperimentConfig.model_validate({
        "storage": {"root": root}, "tracking": {"mode": "offline"}, "experiment": {
            "name": name, "route": route, "unit": "user_id", "salt": "variants-fixed",
            "start": now - timedelta(hours=1), "end": now + timedelta(hours=1),
            "variants": [{"name": "control", "model": f"{model}@{control}", "weight": 0.5},
                         {"name": "other", "model": f"{model}@{treatment}", "weight": 0.5}]}})


def test_classify_and_rag_variants_answer_from_their_own_versions_under_concurrent_load(
        api, base_url, platform_root, tmp_path):
    storage = Storage(platform_root)
    registry = Registry(storage)
    texts = ["Officials linked the vaccine to fewer cases", "The coach praised the team"]
    plain = api.post("/v1/classify", json={"texts": texts}).json()  # outside any experiment
    labels = list(plain["predictions"][0]["probabilities"])
    # A lexical version: another runtime in the same dynamic batches as the torch champion.
    lexical = register_lexical(registry)
    lexical_proba = registry.load("article_topic", lexical)[0].predict_proba(texts)
    adapter = registry.get("articles_lora", "champion")
    noop = noop_adapter(platform_root, adapter, tmp_path).version  # answers as its base does
    tag = uuid.uuid4().hex[:6]
    classify_exp = experiment_on("/v1/classify", f"cls-{tag}", "article_topic",
                                 plain["version"], lexical, platform_root)
    rag_exp = experiment_on("/v1/rag", f"rag-{tag}", "articles_lora", adapter.version, noop,
                            platform_root)
    try:
        for cfg in (classify_exp, rag_exp):
            publish_job(cfg)
        poll(lambda: api.post("/v1/classify", json={"texts": texts, "user_id": 1}).json()
             .get("experiment") == classify_exp.experiment.name, "the classify experiment")
        # Concurrent requests of both variants share the classifier's dynamic batches; each is
        # answered by its own variant's version.
        users = list(range(2, 42))
        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(lambda u: api.post("/v1/classify", json={
                "texts": texts, "user_id": u}).json(), users))
        assert {a["variant"] for a in answers} == {"control", "other"}
        for a in answers:
            if a["variant"] == "control":
                assert a["version"] == plain["version"]
                expected = [p["probabilities"] for p in plain["predictions"]]
            else:  # what the lexical version says in this process
                assert a["version"] == lexical
                expected = [dict(zip(labels, row, strict=True)) for row in lexical_proba]
            for got, want in zip(a["predictions"], expected, strict=True):
                assert got["probabilities"] == pytest.approx(want, abs=1e-5)
        def exposures() -> list[tuple[str, str]]:  # the polling user 1 left out
            t = read_log(storage, "/v1/classify", experiment=classify_exp.experiment.name)
            return sorted((u, v) for u, v in zip(t["unit"].to_pylist(), t["variant"].to_pylist(),
                                                 strict=True) if u != "1")

        want = sorted((str(u), a["variant"]) for u, a in zip(users, answers, strict=True))
        poll(lambda: exposures() == want, "each classify exposure is logged once, as answered")

        # /v1/rag: each variant's adapter answers (by registry reference); the zeroed copy
        # answers exactly as the base model does, the control as the served adapter does.
        question = {"question": "What did officials say about the vaccine?", "k": 2,
                    "max_tokens": 12}
        served = api.post("/v1/rag", json={**question, "model": "articles_lora"}).json()
        base = api.post("/v1/rag", json={**question, "model": "base_lm"}).json()
        assert served["answer"] != base["answer"]  # the adapter changes the answer
        seen = {}
        for user in range(1, 40):
            reply = poll(lambda u=user: api.post("/v1/rag", json={**question, "user_id": u})
                         .json(), "a rag answer")
            if reply["experiment"] == rag_exp.experiment.name:
                seen.setdefault(reply["variant"], reply)
            if len(seen) == 2:
                break
        assert seen["control"]["model"] == f"articles_lora@{adapter.version}"
        assert seen["control"]["answer"] == served["answer"]
        assert seen["other"]["model"] == f"articles_lora@{noop}"
        assert seen["other"]["answer"] == base["answer"]
        # A reference that is no adapter is refused, naming what it is.
        for model, words in (("articles_lora@999", "no version 999"),
                             ("base_lm@1", "not a LoRA adapter")):
            reply = api.post("/v1/completions", json={"model": model, "prompt": "x",
                                                      "max_tokens": 2})
            assert reply.status_code == 404 and words in reply.json()["error"]["message"]
    finally:
        for cfg in (classify_exp, rag_exp):
            cfg.experiment.killed = True
            publish_job(cfg)
    poll(lambda: api.post("/v1/classify", json={"texts": texts, "user_id": 1}).json()
         .get("experiment") is None, "the kill switch applies")
