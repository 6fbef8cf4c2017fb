"""The model registry: versions with lineage, aliases, rollback, loading without pickles."""

from __future__ import annotations

import pytest
import torch

from slipway.registry import Registry, RegistryError, architecture
from slipway.storage import Storage


@architecture("TinyNet")
class TinyNet(torch.nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(width, 1)


def test_register_load_alias_and_rollback(tmp_path):
    reg = Registry(Storage(str(tmp_path)))
    nets = [TinyNet(3) for _ in range(3)]
    for i, net in enumerate(nets):
        mv = reg.register("clicks", net.state_dict(), "TinyNet", {"width": 3},
                          metrics={"auc": 0.6 + i / 10}, parent_run=f"train-{i}")
        assert mv.version == i + 1
    assert reg.versions("clicks") == [1, 2, 3]
    reg.set_alias("clicks", "champion", 1)
    reg.set_alias("clicks", "champion", 3)
    model, mv = reg.load("clicks", "champion")
    assert mv.version == 3 and mv.metadata["parent_run"] == "train-2"
    assert mv.metrics["auc"] == pytest.approx(0.8)
    assert torch.equal(model.layer.weight, nets[2].layer.weight)
    assert not model.training
    assert reg.rollback("clicks") == 1
    assert reg.get("clicks", "champion").version == 1
    assert reg.get("clicks", 2).version == 2


def test_clear_errors_for_missing_things(tmp_path):
    reg = Registry(Storage(str(tmp_path)))
    with pytest.raises(RegistryError, match="no model named 'nope'"):
        reg.get("nope")
    reg.register("m", TinyNet(2).state_dict(), "TinyNet", {"width": 2})
    with pytest.raises(RegistryError, match="no alias 'champion'"):
        reg.get("m", "champion")
    with pytest.raises(RegistryError, match="no version 9"):
        reg.get("m", 9)
    with pytest.raises(RegistryError, match="unknown architecture"):
        reg.register("m", {}, "Pickled", {})
    reg.set_alias("m", "champion", 1)
    with pytest.raises(RegistryError, match="no earlier version"):
        reg.rollback("m")


def test_weights_that_do_not_fit_the_architecture_are_refused(tmp_path):
    reg = Registry(Storage(str(tmp_path)))
    state = {**TinyNet(2).state_dict(), "extra.weight": torch.zeros(1)}
    reg.register("m", state, "TinyNet", {"width": 2})
    with pytest.raises(RegistryError, match=r"do not fit TinyNet: missing \[\], "
                                            r"unexpected \['extra.weight'\]"):
        reg.load("m", 1)


def _register_and_promote(root: str, writer: int, barrier, count: int) -> None:
    reg = Registry(Storage(root))
    barrier.wait()  # every process starts at once
    for n in range(count):
        mv = reg.register("race", TinyNet(2).state_dict(), "TinyNet", {"width": 2},
                          writer=writer, n=n)
        reg.set_alias("race", "champion", mv.version, f"{writer}-{n}")


@pytest.fixture(params=["disk", "s3"])
def shared_root(request, tmp_path) -> tuple[str, int, int]:
    """A root several processes write at once (a local folder, or an S3 bucket), with how many
    writers and registrations each (fewer on S3, where each costs a dozen HTTP requests)."""
    if request.param == "disk":
        return str(tmp_path), 6, 8
    return request.getfixturevalue("s3_root"), 4, 4


def test_concurrent_registrations_and_alias_moves_from_processes_lose_nothing(shared_root):
    """Processes registering and promoting at once (a monitor-triggered retraining and a
    scheduled pipeline): every registration gets its own version with its own metadata, and
    every alias move is in the history, on a local disk and on S3."""
    import multiprocessing

    shared_root, writers, count = shared_root
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(writers)
    procs = [context.Process(target=_register_and_promote,
                             args=(shared_root, w, barrier, count)) for w in range(writers)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
        assert proc.exitcode == 0
    reg = Registry(Storage(shared_root))
    assert reg.versions("race") == list(range(1, writers * count + 1))
    made = {(reg.get("race", v).metadata["writer"], reg.get("race", v).metadata["n"])
            for v in reg.versions("race")}
    assert made == {(w, n) for w in range(writers) for n in range(count)}
    history = Storage(shared_root).read_json("models", "race", "aliases.json")["history"]
    assert sorted(h["reason"] for h in history) == sorted(
        f"{w}-{n}" for w in range(writers) for n in range(count))
    # Each move saw the one before it: the history is one chain.
    assert all(h["previous"] == before["version"]
               for before, h in zip(history, history[1:], strict=False))
