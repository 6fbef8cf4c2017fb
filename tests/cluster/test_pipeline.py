"""The pipeline job on a small world: every stage runs once, a second run skips them all, a
changed config reruns that stage and what follows from it, and --only / --from force a stage."""

from __future__ import annotations

import pytest
import yaml

from jobs.pipeline import cli
from slipway.storage import Storage

STAGES = ("generate", "ingest", "features", "train", "evaluate", "promote", "monitor")
SMALL = {"generate": ["generator.num_events=3000", "generator.num_users=150",
                      "generator.num_articles=100", "generator.days=12"],
         "train": ["trainer.num_workers=1", "model.epochs=1", "engagement.max_examples=2000",
                   "trainer.keep_checkpoints=null"]}


def write_pipeline(path, root: str, **extra: list[str]) -> str:
    """The shipped pipeline's engagement stages (and the monitor), with small sizes."""
    with open("configs/pipeline.yaml") as f:
        cfg = yaml.safe_load(f)
    cfg["stages"] = [s for s in cfg["stages"] if s["name"] in STAGES]
    for stage in cfg["stages"]:
        stage["set"] = [*stage.get("set", []), *SMALL.get(stage["name"], []),
                        *extra.get(stage["name"], [])]
    cfg.update(storage={"root": root}, tracking={"mode": "disabled"})
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def outcomes(capsys) -> dict[str, str]:
    """{stage: running | skipped | waiting} from the `== stage: ...` lines printed."""
    lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    return {words[1].rstrip(":"): words[2] for words in lines if words[:1] == ["=="]}


def test_stages_run_once_then_skip_until_their_config_or_inputs_change(tmp_path, root, capsys,
                                                                      ray_session):
    config = write_pipeline(tmp_path / "pipeline.yaml", root)
    cli(["--config", config])
    first = outcomes(capsys)
    assert first == {**dict.fromkeys(STAGES[:-1], "running"), "monitor": "waiting"}
    promote = Storage(root).read_json("pipeline", "promote.json")  # what the skip compares
    assert promote["config_hash"] and all(promote["inputs"].values()), promote

    cli(["--config", config])
    assert outcomes(capsys) == {**dict.fromkeys(STAGES[:-1], "skipped"), "monitor": "waiting"}

    # A new training setting: train reruns, and so do the stages that read its model.
    config = write_pipeline(tmp_path / "pipeline.yaml", root, train=["model.epochs=2"])
    cli(["--config", config])
    assert outcomes(capsys) == {"generate": "skipped", "ingest": "skipped",
                                "features": "skipped", "train": "running",
                                "evaluate": "running", "promote": "running",
                                "monitor": "waiting"}

    cli(["--config", config, "--only", "features"])
    assert outcomes(capsys) == {"features": "running"}
    cli(["--config", config, "--from", "evaluate"])  # forced; promote's inputs are as they were
    assert outcomes(capsys) == {**dict.fromkeys(STAGES[:4], "skipped"), "evaluate": "running",
                                "promote": "skipped", "monitor": "waiting"}


def test_a_failing_stage_stops_the_pipeline_and_names_the_rerun(tmp_path, root, capsys,
                                                               ray_session):
    config = write_pipeline(tmp_path / "pipeline.yaml", root,
                            ingest=["datasets.events.max_quarantine_share=0.0001"])
    with pytest.raises(SystemExit) as exited:
        cli(["--config", config])
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
