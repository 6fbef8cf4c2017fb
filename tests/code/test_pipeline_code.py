"""The pipeline's skip decision: a stage reruns when the code it runs changed, not only its
config or inputs (before vs after an edit, on a package of its own)."""

from __future__ import annotations

import sys

from jobs.generate import GenerateConfig
from jobs.pipeline import Stage, code_version, plan, record
from slipway.config import load_config
from slipway.storage import Storage


def write_package(folder, helper_body: str) -> None:
    package = folder / "pkgjobs"
    package.mkdir(exist_ok=True)
    (package / "__init__.py").write_text("")
    # The job imports its helper inside a function, as the jobs import their heavy modules.
    (package / "job.py").write_text("def main(cfg):\n    from pkgjobs.helper import run\n"
                                    "    return run(cfg)\n")
    (package / "helper.py").write_text(f"def run(cfg):\n    {helper_body}\n")
    (package / "unused.py").write_text("X = 1\n")


def test_code_version_follows_the_job_and_what_it_imports(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    write_package(tmp_path, "return 1")
    first = code_version("pkgjobs.job", first_party=("pkgjobs",))
    write_package(tmp_path, "return 1  # a comment changes nothing")
    assert code_version("pkgjobs.job", first_party=("pkgjobs",)) == first
    (tmp_path / "pkgjobs" / "unused.py").write_text("X = 2\n")  # not imported by the job
    assert code_version("pkgjobs.job", first_party=("pkgjobs",)) == first
    write_package(tmp_path, "return 2")  # the helper two imports away changed
    assert code_version("pkgjobs.job", first_party=("pkgjobs",)) != first
    sys.modules.pop("pkgjobs", None)


def test_a_stage_whose_code_changed_since_its_record_reruns(tmp_path):
    storage = Storage(str(tmp_path))
    stage = Stage(name="generate", job="generate")
    cfg = load_config(GenerateConfig, "configs/generate.yaml", [f"storage.root={tmp_path}"])
    record(stage, cfg, storage, "ran", 1.0)
    assert plan(stage, cfg, storage, force=False).action == "skip"
    doc = storage.read_json("pipeline", "generate.json")
    storage.write_json({**doc, "code_version": "0" * 16}, "pipeline", "generate.json")
    step = plan(stage, cfg, storage, force=False)
    assert (step.action, step.reason) == ("run", "code of jobs.generate or what it imports "
                                                 "changed")
