"""The pipeline job: it builds the whole platform (the session's platform root: every stage from
generation to the LLM and the index, at small sizes), a second run skips every stage, a new model
version reruns the stages that read it, a changed setting reruns its stage alone, and --only /
--from force a stage."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from benchmarks.platform import SMALL
from jobs.pipeline import cli
from llm.index import VectorIndex
from slipway.registry import Registry
from slipway.storage import Storage

MODELS = ("engagement", "article_topic", "base_lm", "articles_lora")


def outcomes(capsys) -> dict[str, str]:
    """{stage: running | skipped | waiting} from the `== stage: ...` lines printed."""
    lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    return {words[1].rstrip(":"): words[2] for words in lines if words[:1] == ["=="]}


def test_the_pipeline_builds_the_platform_then_reruns_only_what_changed(platform_build, capsys,
                                                                      tmp_path):
    root, layer, first = platform_build
    stages = [s["name"] for s in yaml.safe_load(open("configs/pipeline.yaml"))["stages"]]
    platform = [s for s in stages if s != "tune"]  # the platform leaves tuning out
    assert list(first) == platform
    assert {k: v for k, v in first.items() if k != "monitor"} == dict.fromkeys(platform[:-1],
                                                                               "ran")
    registry = Registry(Storage(root))
    assert all("champion" in registry.aliases(m) for m in MODELS)  # every gate passed
    assert registry.get("articles_lora").metadata["base"] == "registry:base_lm@1"
    index = VectorIndex.load(Storage(root), "articles")
    articles = len(pd.read_parquet(f"{root}/curated/articles"))
    assert index.manifest["documents"] == articles and len(index.chunks) == index.ntotal
    # Two shards (built by Ray Data): contiguous halves of the rows.
    (a, b), (c, d) = index.manifest["shards"]
    assert (a, b == c, d) == (0, True, len(index.chunks)) and abs((b - a) - (d - c)) <= 1
    promote = Storage(root).read_json("pipeline", "promote.json")  # what the skip compares
    assert promote["config_hash"] and all(promote["inputs"].values()), promote

    config = ["--config", "configs/pipeline.yaml", "--config", layer]
    cli(config)
    again = outcomes(capsys)
    # The monitor waits for a log, or runs on one the Serve tests left if they came first.
    assert again.pop("monitor") in ("waiting", "running", "skipped")
    assert again == dict.fromkeys(platform[:-1], "skipped")

    # A new version of the model, registered as a training run registers one (here v1's weights
    # and lineage again, as challenger): the stages that read its versions rerun, and only they.
    model, v1 = registry.load("engagement", 1)
    lineage = {k: v for k, v in v1.metadata.items()
               if k not in ("name", "version", "created_at", "architecture", "artifact_uri")}
    copy = registry.register("engagement", model.state_dict(), v1.metadata["architecture"]["name"],
                             v1.metadata["architecture"]["params"], **lineage)
    registry.set_alias("engagement", "challenger", copy.version, "a run outside the pipeline")
    cli(config)
    changed = outcomes(capsys)
    changed.pop("monitor")
    assert changed == {**dict.fromkeys(platform[:-1], "skipped"), "evaluate": "running",
                       "promote": "running"}

    # A new setting of a stage reruns that stage; what it writes beside the models (their
    # evaluations) is not an input of the stages after it.
    ref = tmp_path / "ref.yaml"
    ref.write_text(yaml.safe_dump({"stages": [
        {"name": "evaluate", "set": ["model_name=engagement", "ref=champion"]}]}))
    cli([*config, "--config", str(ref)])
    changed = outcomes(capsys)
    changed.pop("monitor")
    assert changed == {**dict.fromkeys(platform[:-1], "skipped"), "evaluate": "running"}

    cli([*config, "--only", "evaluate_llm"])
    assert outcomes(capsys) == {"evaluate_llm": "running"}
    cli([*config, "--config", str(ref), "--from", "evaluate"])  # forced; promote unchanged
    forced = outcomes(capsys)
    forced.pop("monitor")
    before = platform[:platform.index("evaluate")]
    assert forced == {**dict.fromkeys(platform[:-1], "skipped"), "evaluate": "running"}
    assert all(forced[s] == "skipped" for s in before)


def test_a_failing_stage_stops_the_pipeline_and_names_the_rerun(tmp_path, root, capsys,
                                                               ray_session):
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({
        "storage": {"root": root}, "tracking": {"mode": "disabled"},
        "stages": [{"name": "generate", "set": SMALL["generate"]},
                   {"name": "ingest", "set": ["datasets.events.max_quarantine_share=0.0001"]}]}))
    with pytest.raises(SystemExit) as exited:
        cli(["--config", "configs/pipeline.yaml", "--config", str(path)])
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert "stage ingest failed: events:" in err and "python -m jobs.pipeline --from ingest" in err
    assert not Storage(root).exists("pipeline", "ingest.json")
    assert Storage(root).exists("pipeline", "generate.json")


def test_an_unknown_stage_is_refused_with_the_stage_names(capsys):
    with pytest.raises(SystemExit) as exited:
        cli(["--config", "configs/pipeline.yaml", "--only", "trian"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "only: Value error, no stage 'trian'; pick one of" in err and "'train'" in err
