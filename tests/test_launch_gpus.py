"""One GPU per job of ``--launcher local`` (convit/core/local_gpus.py, convit/core/launch.py).

There is no GPU here: the device count is mocked, and each job reports the
``CUDA_VISIBLE_DEVICES`` it was started with (submitit's local jobs are real processes)."""

from __future__ import annotations

import os

import pytest

import convit.core.local_gpus as local_gpus
from convit.core.launch import LaunchOptions, _pool, launch


@pytest.fixture
def gpus(monkeypatch):
    """``gpus(count, listed)``: CUDA counts ``count`` devices; ``listed`` is this process's
    CUDA_VISIBLE_DEVICES (None: unset)."""

    def set_up(count: int, listed=None):
        monkeypatch.setattr(local_gpus, "_device_count", lambda: count)
        if listed is None:
            monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        else:
            monkeypatch.setenv("CUDA_VISIBLE_DEVICES", listed)

    return set_up


def test_visible_gpus_respect_the_process_own_list(gpus):
    gpus(4)
    assert local_gpus.visible_gpus() == ["0", "1", "2", "3"]
    gpus(2, "5, 2")
    assert local_gpus.visible_gpus() == ["5", "2"]
    gpus(2, "GPU-aa,MIG-bb")
    assert local_gpus.visible_gpus() == ["GPU-aa", "MIG-bb"]
    gpus(1, "3,-1,4")  # CUDA stops at the first invalid entry
    assert local_gpus.visible_gpus() == ["3"]
    gpus(0, "0,1")  # listed, but no CUDA here
    assert local_gpus.visible_gpus() == []
    gpus(2, "")
    assert local_gpus.visible_gpus() == []


class _FakeJob:
    def __init__(self, params: dict) -> None:
        self.params = dict(params)
        self.finished = False

    def done(self) -> bool:
        return self.finished

    def result(self):
        return self.params

    @property
    def paths(self):
        return type("Paths", (), {"stderr": "-"})()


class _FakeExecutor:
    """Records the parameters each job was submitted with and the GPUs running then; while
    the launcher waits, one job finishes: alternately the newest and the oldest running."""

    def __init__(self) -> None:
        self.parameters: dict = {}
        self.jobs: list[_FakeJob] = []
        self.busy: list[list[str]] = []  # the GPUs running at each submission
        self.turn = 0

    def update_parameters(self, **kw) -> None:
        self.parameters.update(kw)

    def submit(self, _fn) -> _FakeJob:
        job = _FakeJob(self.parameters)
        self.jobs.append(job)
        self.busy.append([str(j.params.get("visible_gpus", ["-"])[0]) for j in self.jobs if not j.finished])
        return job

    def finish_one(self, _seconds: float = 0) -> None:
        running = [j for j in self.jobs if not j.finished]
        self.turn += 1
        (running[-1] if self.turn % 2 else running[0]).finished = True


@pytest.mark.parametrize("jobs, gpu_names", [(2, ["0", "1"]), (3, ["4", "6", "7"]), (4, ["0", "1"])])
def test_each_running_job_gets_the_least_used_gpu(jobs, gpu_names, monkeypatch):
    """With as many jobs at a time as GPUs, no two running jobs share a GPU; with more, no GPU
    runs more than its share."""
    monkeypatch.setattr(
        "convit.core.launch.time.sleep", lambda s: [j.__setattr__("finished", True) for j in ex.jobs]
    )
    ex = _FakeExecutor()
    outcomes: dict = {}
    tasks = [(f"t{i}", print, ()) for i in range(9)]
    _pool(ex, tasks, jobs, lambda o: None, list(range(9)), {}, outcomes, gpu_names)
    share = -(-jobs // len(gpu_names))
    for busy in ex.busy:
        assert max(busy.count(g) for g in gpu_names) <= share, busy
    assert sorted(outcomes) == list(range(9))
    for o in outcomes.values():
        assert o.value["gpus_per_node"] == 1 and str(o.value["visible_gpus"][0]) in gpu_names


def test_gpu_names_that_are_not_indices_are_exported_by_the_job_setup():
    assert local_gpus.job_parameters("3") == {"gpus_per_node": 1, "visible_gpus": [3], "setup": ()}
    assert local_gpus.job_parameters("GPU-1a2b") == {
        "gpus_per_node": 0,
        "visible_gpus": (),
        "setup": ["export CUDA_VISIBLE_DEVICES=GPU-1a2b"],
    }
    assert "up to 2 share a GPU" in local_gpus.sharing_note(3, ["0", "1"])
    assert "share" not in local_gpus.sharing_note(2, ["0", "1"])


@pytest.mark.parametrize("listed, expected", [(None, ["0", "1"]), ("GPU-aa,7", ["GPU-aa", "7"])])
def test_local_jobs_each_see_one_gpu(tmp_path, gpus, listed, expected):
    """Real local jobs (submitit's LocalExecutor processes), 2 at a time on 2 GPUs: each
    reports a CUDA_VISIBLE_DEVICES of one GPU, the two different; the launcher says so."""
    gpus(2, listed)
    said: list[str] = []
    tasks = [(f"t{i}", os.getenv, ("CUDA_VISIBLE_DEVICES",)) for i in range(2)]
    outcomes = launch(
        tasks, LaunchOptions(launcher="local", jobs=2, timeout_min=5), tmp_path, say=said.append
    )
    assert all(o.ok for o in outcomes), [o.error for o in outcomes]
    assert sorted(o.value for o in outcomes) == sorted(expected)
    assert said == [f"local jobs on 2 GPU(s) ({', '.join(expected)}): each job sees one"]


def test_without_gpus_local_jobs_see_none(gpus, monkeypatch):
    """No GPU: nothing is said and the executor is given no GPU (submitit then hides them all)."""
    gpus(0)
    ex = _FakeExecutor()
    monkeypatch.setattr("convit.core.launch.time.sleep", ex.finish_one)
    outcomes: dict = {}
    _pool(ex, [("t", print, ())] * 2, 1, lambda o: None, [0, 1], {}, outcomes, local_gpus.visible_gpus())
    assert len(outcomes) == 2 and ex.parameters == {}
