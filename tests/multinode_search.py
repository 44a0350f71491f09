"""Runs a lobsearch search on a simulated multi-node Ray cluster (one machine, three raylets).

    python tests/multinode_search.py {spread|lose-node} SPACE EXPORT STORAGE OUT_JSON

A head node with no CPUs (it runs the driver only, as on a real cluster) and two 1-CPU worker
nodes. ``lose-node`` removes the second worker while one of its trials is mid-way, as a spot
instance loss would. Writes what the test checks to OUT_JSON. Run by tests/test_multinode.py in
its own process, so its cluster never meets the test session's Ray.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from lobsearch.tune import main


def trial_rows(experiment: Path) -> dict[str, list[dict]]:
    rows = {}
    for result in experiment.glob("run_trial_*/result.json"):
        lines = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        if lines:
            rows[result.parent.name] = lines
    return rows


def remove_when_busy(cluster: Cluster, node, experiment: Path, epochs: int, log: dict) -> None:
    """Remove ``node`` once a trial on it has reported an epoch and has two or more to go."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        rows = trial_rows(experiment)
        busy = [n for n, r in rows.items() if r[-1]["node_id"] == node.node_id and r[-1]["training_iteration"] <= epochs - 2]
        finished = {n: r for n, r in rows.items() if r[-1]["training_iteration"] == epochs}
        if busy and finished:
            log["interrupted"] = busy
            log["finished_before"] = finished
            cluster.remove_node(node, allow_graceful=False)
            for name in busy:  # a lost machine takes its trial processes with it
                with contextlib.suppress(ProcessLookupError):
                    os.kill(rows[name][-1]["pid"], signal.SIGKILL)
            return
        time.sleep(0.2)


def run(mode: str, space: str, export: str, storage: str, out: str) -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    cluster.connect()
    experiment = Path(storage) / mode
    log: dict = {"head": cluster.head_node.node_id, "workers": [w.node_id for w in workers]}
    watcher = None
    if mode == "lose-node":
        epochs = int(sys.argv[6])
        watcher = threading.Thread(target=remove_when_busy, args=(cluster, workers[1], experiment, epochs, log))
        watcher.start()
    log["code"] = main([space, "--data", export, "--storage", storage, "--name", mode, "--wandb", "disabled",
                        "--max-concurrent", "2"])
    if watcher is not None:
        watcher.join()
    log["rows"] = trial_rows(experiment)
    Path(out).write_text(json.dumps(log))
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    run(*sys.argv[1:6])
