"""Local Ray clusters for tests: nodes started as `ray start` would start them on machines, here
on 127.0.0.1 with ports and temp dirs of their own (the test session's Ray, and the two-node
cluster of tests/cluster/test_multinode.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time

from slipway.local import free_port

BIN = os.path.dirname(sys.executable)


class LocalCluster:
    """Nodes started with `ray start --block` on 127.0.0.1, each in its own process group with
    its own temp dir and ports, so that clusters run side by side on one machine."""

    def __init__(self, num_cpus: int = 1, object_store_memory: int | None = None,
                 log_monitor: bool = True, **env: str) -> None:
        """`log_monitor=False`: no process tails the workers' log files for drivers (the test
        session's drivers do not print them)."""
        self.num_cpus, self.object_store_memory = num_cpus, object_store_memory
        self.log_monitor = log_monitor
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        self.env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        # The raylet settings of cluster/'s nodes (slipway.runtime.system_config).
        self.env.update(PATH=f"{BIN}:{os.environ['PATH']}", RAY_AUTH_MODE="disabled",
                        SLIPWAY_PROGRESS="0", RAY_num_workers_soft_limit=str(2 * num_cpus), **env)
        self.nodes: list[subprocess.Popen] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start_node(self, head: bool = False) -> subprocess.Popen:
        # Each node its own temp dir, as on separate machines (nodes sharing one would share
        # their runtime-env folders, and one node's agent would replace the job's working dir
        # under the other's driver); short, for the socket paths inside.
        temp_dir = tempfile.mkdtemp(prefix="rc", dir="/tmp")
        # `ray start` through this interpreter's path rather than the `ray` script, whose shebang
        # names the path the venv was made at: the workers run the same interpreter path as
        # `make setup`, so DeepSpeed's ops (whose build commands hold it) are not rebuilt when
        # .venv is a link to a cached venv (as in CI).
        args = [sys.executable, "-m", "ray.scripts.scripts", "start", "--block",
                "--node-ip-address=127.0.0.1",
                f"--num-cpus={self.num_cpus}", "--disable-usage-stats", f"--temp-dir={temp_dir}",
                f"--dashboard-agent-listen-port={free_port()}",
                f"--metrics-export-port={free_port()}"]
        if self.object_store_memory:
            args.append(f"--object-store-memory={self.object_store_memory}")
        if not self.log_monitor:
            args.append("--include-log-monitor=false")
        if head:
            args += ["--head", f"--port={self.gcs_port}", "--dashboard-host=127.0.0.1",
                     f"--dashboard-port={self.dashboard_port}", "--include-dashboard=true",
                     f"--ray-client-server-port={free_port()}"]
        else:
            args += [f"--address=127.0.0.1:{self.gcs_port}"]
        proc = subprocess.Popen(args, env=self.env, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.nodes.append(proc)
        return proc

    def add_node(self, tries: int = 3) -> subprocess.Popen:
        """Start a worker node and wait until it is alive. A node whose raylet died at start-up
        is started again: the raylet waits a fixed 15 s for the dashboard agent's port file
        (ray-project/ray#65983), which an agent starting on a loaded machine can miss."""
        expected = len(self.alive_nodes()) + 1
        for _ in range(tries):
            proc = self.start_node()
            try:
                self.wait_for_nodes(expected, while_running=proc)
                return proc
            except AssertionError:
                if proc.poll() is None:  # alive but never joined: not a start-up crash
                    raise
        raise AssertionError(f"the cluster did not reach {expected} alive nodes")

    def alive_nodes(self) -> list[str]:
        from ray.util.state import list_nodes

        return [n.node_id for n in list_nodes(address=self.dashboard, raise_on_missing_output=False)
                if n.state == "ALIVE"]

    def wait_for_nodes(self, count: int, timeout_s: float = 300,
                       while_running: subprocess.Popen | None = None) -> list[str]:
        """The alive nodes once there are `count`; gives up after `timeout_s` or once
        `while_running` (a node being started) has exited."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and (while_running is None
                                               or while_running.poll() is None):
            try:
                alive = self.alive_nodes()
                if len(alive) == count:
                    return alive
            except Exception:  # the dashboard is still starting
                pass
            time.sleep(1)
        raise AssertionError(f"the cluster did not reach {count} alive nodes")

    def kill(self, proc: subprocess.Popen) -> None:
        """Stop a node and everything it started at once, as a lost machine would."""
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)

    def stop(self) -> None:
        """Stop every node (`stop_node`)."""
        for proc in self.nodes:
            stop_node(proc.pid)
            proc.wait(timeout=60)

    def submit(self, job_id: str, *entrypoint: str, wait: bool = True
               ) -> subprocess.CompletedProcess:
        """`ray job submit --working-dir .` from the repository, as from a laptop."""
        return subprocess.run([f"{BIN}/ray", "job", "submit", f"--address={self.dashboard}",
                               f"--submission-id={job_id}", "--working-dir", ".",
                               *([] if wait else ["--no-wait"]), "--", *entrypoint],
                              env=self.env, capture_output=True, text=True, timeout=600)


def running(pid: int) -> bool:
    """Whether process `pid` runs (an exited child not yet waited for does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def stop_node(pid: int, grace_s: float = 5) -> None:
    """Stop the node whose `ray start --block` is `pid` (started by this process or another) as
    Ctrl-C stops it; SIGKILL its process group, which holds everything it started, if it lingers."""
    if running(pid):
        os.kill(pid, signal.SIGINT)
    deadline = time.monotonic() + grace_s
    while running(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass

