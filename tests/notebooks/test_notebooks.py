"""The researchers' notebooks run top to bottom (papermill, this venv's kernel) attached to the
test session's Ray, over the platform root, with their long cells shortened by parameters."""

from __future__ import annotations

import papermill as pm
import pytest


def run(name: str, tmp_path, **parameters) -> list[str]:
    """Execute notebooks/<name>; return its cells' text outputs (a failing cell fails here)."""
    out = pm.execute_notebook(f"notebooks/{name}", str(tmp_path / name), parameters=parameters,
                              kernel_name="python3", progress_bar=False, cwd=".")
    return ["".join(o.get("text", "")) + o.get("data", {}).get("text/plain", "")
            for cell in out.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]


@pytest.fixture(scope="module")
def attach(ray_session) -> dict:
    return {"ray_address": ray_session.address_info["address"]}


def test_features_notebook_joins_and_plots_the_store(platform_root, attach, tmp_path):
    outputs = run("01_features.ipynb", tmp_path, root=platform_root, sample_events=2000, **attach)
    text = "\n".join(outputs)
    assert "user_engagement:" in text and "article_engagement:" in text  # the views listed
    assert "user_ctr_7d" in text
    assert sum("<Figure" in o for o in outputs) >= 2  # the plots were drawn


def test_experiment_notebook_tunes_and_compares_with_the_champion(platform_root, attach,
                                                                   tmp_path):
    outputs = run("02_experiment.ipynb", tmp_path, root=platform_root, trials=2, epochs=1,
                  max_examples=2000, tracking="disabled", **attach)
    comparison = outputs[-1]
    assert "challenger" in comparison and "champion" in comparison and "roc_auc" in comparison
