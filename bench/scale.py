"""Scale: a replayed search of many trials on a simulated multi-node GPU cluster, driver measured.

    python bench/scale.py [--trials 1000] [--concurrent 64] [--epoch-s 1.0] [--nodes 8]
        [--gpus-per-node 8] [--gpus-per-trial 1] [--wandb offline] [--kill-driver-at 0.95]
        [--lose-node-at 0] [--fresh-ray-on-resume] [--out docs/bench/scale.json]

Starts a ``ray.cluster_utils.Cluster`` on this machine: a head node holding no trial and
``--nodes`` worker nodes, each declaring ``--gpus-per-node`` logical GPUs (no device behind
them) and one logical CPU per trial slot. Then runs ``python -m lobsearch.tune`` on
``search_spaces/lstm.yaml`` (9 parameters; 10 epochs, ASHA grace 2, reduction 3) with
``--replay`` of a real search's results.json (``--source``), joined to that cluster with
``--address``, as a child process instrumented by this file (``driver`` sub-command: timing
OptunaSearch.suggest, Tune's experiment-state saves and the results/report writes, and logging
every trial start, epoch and end with the driver's RSS). Optionally it kills one worker node
when a fraction of the trials has finished (and adds a fresh node 5 s later), and SIGKILLs the
driver at another fraction, then resumes the search with ``--resume``.

Measured against the issue's targets (printed, and written to ``--out`` as JSON):

- slot utilization: replayed epochs x epoch_s over slots x wall time, from the first trial
  start to the kill of the driver (or the last trial end); the ideal is 1.0;
- searcher suggest latency, p50/p95 over the last 10 % of suggestions (wall time, and the
  driver thread's CPU time in it: the wall time less its waits for a core and the GIL), and exact duplicate
  configurations among the first ``--concurrent`` trials (and among all);
- the driver's RSS: slope against trials finished (least squares, after the first
  ``--concurrent``), and its peak (VmHWM) at the end;
- processes and memory: the driver's process tree (W&B's service included), the head node's
  Ray processes, every worker node's (raylets, agents, trial workers), sampled every 2 s;
- results.json, results.csv and report.html write time, report size, and the wait from the last
  trial's end to the report written;
- resume after the driver's SIGKILL (on the same simulated cluster, or with
  ``--fresh-ray-on-resume`` on a new one, as a local Ray per search or a restarted cluster would
  be): from the relaunch to the first epoch the resumed driver receives, that no trial finished
  before the kill is lost or started again, and that no trial's history misses an epoch;
- placement: no logical GPU held by more trials than ``1 / gpus_per_trial`` at once, trials per
  node, and after a node loss the trials it held retried and finished;
- CPU seconds per replayed epoch of the driver, the head node and the trial processes;
- and first, without Ray (``searcher_probe``; ``--searcher-only`` runs only it,
  ``--no-searcher-probe`` skips it): Optuna's TPE on the same space with ``--trials`` finished
  and ``--concurrent`` pending trials, with and without the constant liar.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

SOURCE = ROOT / "docs" / "bench" / "scale_source_results.json"
SPACE = ROOT / "search_spaces" / "lstm.yaml"
NAME = "scale"


# ---- the instrumented driver (a child process) ----------------------------------------------


class EventLog:
    """JSON lines appended (and flushed) to one file; picklable, so a Tune callback holding it is
    restored with the experiment."""

    def __init__(self, path: str):
        self.path = path
        self._file: Any = None

    def __getstate__(self) -> dict:
        return {"path": self.path, "_file": None}

    def __call__(self, kind: str, **fields: Any) -> None:
        if self._file is None:
            self._file = open(self.path, "a", buffering=1)
        self._file.write(json.dumps({"kind": kind, "t": time.time(), "pid": os.getpid(), **fields}) + "\n")


def memory_kb(pid: int | str = "self") -> dict[str, int]:
    """VmRSS and VmHWM of a process in KiB (0 when it is gone)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {"rss_kb": 0, "hwm_kb": 0}
    found = {line.split(":")[0]: int(line.split()[1]) for line in lines if line.startswith(("VmRSS", "VmHWM"))}
    return {"rss_kb": found.get("VmRSS", 0), "hwm_kb": found.get("VmHWM", 0)}


def bench_callback(log: EventLog) -> Any:
    from ray import tune

    class BenchCallback(tune.Callback):
        def __init__(self, log: EventLog):
            self.log = log

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.log("start", trial=trial.trial_id)

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            self.log("epoch", trial=trial.trial_id, epoch=result.get("epoch"), node=result.get("node_id"),
                     gpus=result.get("gpu_ids"))

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.log("complete", trial=trial.trial_id, choices=CHOICES["calls"], choice_s=CHOICES["s"],
                     **memory_kb())

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.log("error", trial=trial.trial_id)

    return BenchCallback(log)


CHOICES = {"calls": 0, "s": 0.0}
"""The driver's calls of the scheduler's ``choose_trial_to_run`` and their seconds, so far."""


def counted_choice() -> None:
    """Count and time ``FIFOScheduler.choose_trial_to_run`` (ASHA's) into ``CHOICES``, outside
    lobsearch's own patch of it when this code has one."""
    from ray.tune.schedulers import FIFOScheduler

    try:
        from lobsearch import trialchoice
    except ImportError:  # an older lobsearch, timed as an A/B reference
        pass
    else:
        trialchoice.install()
    choose = FIFOScheduler.choose_trial_to_run

    def wrapper(self: Any, tune_controller: Any) -> Any:
        started = time.perf_counter()
        try:
            return choose(self, tune_controller)
        finally:
            CHOICES["calls"] += 1
            CHOICES["s"] += time.perf_counter() - started

    FIFOScheduler.choose_trial_to_run = wrapper


def timed(log: EventLog, kind: str, owner: Any, attribute: str, count: Any = None) -> None:
    """Replace ``owner.attribute`` by a wrapper logging each call's seconds as ``kind``."""
    original = getattr(owner, attribute)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started, cpu = time.perf_counter(), time.thread_time()
        try:
            return original(*args, **kwargs)
        finally:
            extra = count(*args) if count is not None else {}
            log(kind, s=time.perf_counter() - started, cpu_s=time.thread_time() - cpu, **extra)

    setattr(owner, attribute, wrapper)


def driver(argv: list[str]) -> int:
    """``python -m lobsearch.tune ARGV`` with the bench's instruments; events go to $SCALE_EVENTS."""
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.search.optuna import OptunaSearch

    import lobsearch.report
    import lobsearch.results
    import lobsearch.search
    import lobsearch.tuner
    from lobsearch.tune import main

    log = EventLog(os.environ["SCALE_EVENTS"])
    log("driver_start")
    timed(log, "suggest", OptunaSearch, "suggest", lambda self, *a: {"n": len(self._ot_trials)})
    timed(log, "experiment_save", TuneController, "save_to_dir", lambda self, *a: {"n": len(self._trials)})
    timed(log, "write_results", lobsearch.results, "write_results")
    timed(log, "write_report", lobsearch.report, "write_report")
    timed(log, "finish", lobsearch.search, "_finish")
    counted_choice()
    callbacks = lobsearch.tuner._callbacks
    lobsearch.tuner._callbacks = lambda plan: [*callbacks(plan), bench_callback(log)]
    if not os.environ.get("SCALE_PROFILE"):
        code = main(argv)
    else:  # where the driver's time goes: cProfile statistics written beside the events
        import cProfile

        profile = cProfile.Profile()
        code = profile.runcall(main, argv)
        profile.dump_stats(os.environ["SCALE_PROFILE"])
    log("driver_end", code=code)
    return code


# ---- processes on this machine --------------------------------------------------------------


def pss_kb(pid: int) -> int:
    """Proportional set size of a process in KiB (shared pages split among their users; 0 when gone)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def process_table() -> dict[int, tuple[int, str, int, float]]:
    """{pid: (parent pid, command name, RSS KiB, CPU seconds used)} of every process in /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2 :].split()
            cpu = (int(fields[11]) + int(fields[12])) * TICK_S  # utime + stime
            table[int(entry.name)] = (int(fields[1]), name, memory_kb(entry.name)["rss_kb"], cpu)
        except (OSError, ValueError, IndexError):
            continue
    return table


def descendants(table: dict[int, tuple[int, str, int, float]], roots: set[int]) -> set[int]:
    """``roots`` and every process below them."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, *_) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, stack = set(), [r for r in roots if r in table]
    while stack:
        pid = stack.pop()
        if pid not in found:
            found.add(pid)
            stack.extend(children.get(pid, ()))
    return found


def node_pids(node: Any) -> set[int]:
    """The processes a Ray node started (raylet, GCS, agents), without their workers."""
    pids = set()
    for infos in node.all_processes.values():
        for info in infos:
            if info.process is not None and info.process.poll() is None:
                pids.add(info.process.pid)
    return pids


class Sampler(threading.Thread):
    """Every ``every_s``: processes and RSS of the driver tree, the head node and the workers."""

    def __init__(self, cluster: Any, every_s: float = 2.0):
        super().__init__(daemon=True)
        self.cluster, self.every_s = cluster, every_s
        self.driver_pid: int | None = None
        self.samples: list[dict[str, Any]] = []
        self.cpu: dict[str, dict[int, float]] = {"driver": {}, "driver_main": {}, "head": {}, "workers": {},
                                                 "trial_workers": {}}
        self.hosts: set[int] = set()  # worker processes seen running a trial (the rest started idle)
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.every_s):
            table = process_table()
            driver = descendants(table, {self.driver_pid}) if self.driver_pid else set()
            head = descendants(table, node_pids(self.cluster.head_node)) - driver
            workers = descendants(table, set().union(*(node_pids(n) for n in self.cluster.worker_nodes))) - driver
            trial_workers = {p for p in workers if table[p][1].startswith("ray::")}
            self.hosts |= {p for p in trial_workers if "Implicit" in table[p][1]}
            main = {self.driver_pid} & set(table)
            for part, pids in (("driver", driver), ("driver_main", main), ("head", head), ("workers", workers),
                               ("trial_workers", trial_workers)):
                for pid in pids:  # CPU seconds so far, per process: the last sample before it ends counts
                    self.cpu[part][pid] = table[pid][3]
            self.samples.append({
                "t": time.time(),
                **{f"{part}_procs": len(pids) for part, pids in
                   (("driver", driver), ("head", head), ("workers", workers), ("trial_workers", trial_workers))},
                **{f"{part}_rss_mb": sum(table[p][2] for p in pids) / 1024 for part, pids in
                   (("driver", driver), ("head", head), ("workers", workers), ("trial_workers", trial_workers))},
                "driver_main_rss_mb": table[self.driver_pid][2] / 1024 if self.driver_pid in table else 0,
                "trial_workers_pss_mb": sum(pss_kb(p) for p in trial_workers) / 1024,
                "everything_pss_mb": sum(pss_kb(p) for p in driver | head | workers) / 1024,
                "wandb_procs": sum("wandb" in table[p][1] for p in driver),
            })


# ---- the orchestrator ------------------------------------------------------------------------


def bench_space(work: Path, args: argparse.Namespace) -> Path:
    """lstm.yaml with the bench's trials, concurrency, resources and no time budget."""
    space = yaml.safe_load(SPACE.read_text())
    space["fixed"]["train"]["epochs"] = args.epochs
    space["search"].pop("time_budget_s", None)
    space["search"].update(num_samples=args.trials, max_concurrent=args.concurrent, cpus_per_trial=1,
                           gpus_per_trial=args.gpus_per_trial, max_failures=3)
    path = work / "scale_space.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def tune_command(space: Path, work: Path, address: str, args: argparse.Namespace, resume: bool) -> list[str]:
    command = [sys.executable, str(Path(__file__).resolve()), "driver", str(space), "--replay", str(args.source),
               "--replay-epoch-s", str(args.epoch_s), "--replay-curves", args.curves, "--address", address,
               "--storage", str(work / "runs"), "--name", NAME, "--wandb", args.wandb]
    return command + (["--resume"] if resume else [])


def read_events(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:  # a line torn by the SIGKILL
            continue
    return events


def run(args: argparse.Namespace) -> dict[str, Any]:
    os.environ.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled", WANDB_SILENT="true")
    work = Path(args.work or tempfile.mkdtemp(prefix="lobsearch-scale-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    events_path = work / "events.jsonl"
    events_path.unlink(missing_ok=True)
    slots_per_node = math.floor(args.gpus_per_node / args.gpus_per_trial + 1e-9) if args.gpus_per_trial else 8
    node_args = {"num_cpus": slots_per_node, "num_gpus": args.gpus_per_node, "object_store_memory": 80 << 20}
    started = time.time()
    cluster = start_cluster(args, node_args)
    cluster_s = time.time() - started
    sampler = Sampler(cluster)
    sampler.start()
    space = bench_space(work, args)
    env = {**os.environ, "SCALE_EVENTS": str(events_path), "PYTHONPATH": str(ROOT / "src")}
    record: dict[str, Any] = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                              "cluster_start_s": round(cluster_s, 1), "slots_per_node": slots_per_node}
    try:
        first = launch(tune_command(space, work, cluster.address, args, resume=False), env, work / "driver1.log",
                       sampler)
        killed_at = watch(first, events_path, args, cluster, node_args, record)
        if killed_at is not None:
            record["driver_killed_at"] = killed_at
            if args.fresh_ray_on_resume:  # as a local Ray per search, or a restarted cluster, would be
                cluster.shutdown()
                cluster = sampler.cluster = start_cluster(args, node_args)
            relaunched = time.time()
            second = launch(tune_command(space, work, cluster.address, args, resume=True), env,
                            work / "driver2.log", sampler)
            record["resume_relaunched_at"] = relaunched
            watch(second, events_path, args, cluster, node_args, record, kill=False)
            record["driver2_exit"] = second.returncode
        else:
            record["driver1_exit"] = first.returncode
    finally:
        sampler.stop.set()
        cluster.shutdown()
    record["wall_s"] = round(time.time() - started, 1)
    record["cpu_s"] = {part: round(sum(found.values()), 1) for part, found in sampler.cpu.items()}
    idle = {pid: cpu for pid, cpu in sampler.cpu["trial_workers"].items() if pid not in sampler.hosts}
    record["cpu_s"]["idle_workers"] = round(sum(idle.values()), 1)
    record["worker_processes"] = {"ran_trials": len(sampler.cpu["trial_workers"]) - len(idle), "never_ran_one": len(idle)}
    return measure(record, read_events(events_path), sampler.samples, work / "runs" / NAME, args)


def start_cluster(args: argparse.Namespace, node_args: dict) -> Any:
    """A head node holding no trial and ``--nodes`` worker nodes of ``node_args``."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, connect=False, shutdown_at_exit=False,
                      head_node_args={"num_cpus": 0, "include_dashboard": False, "object_store_memory": 200 << 20})
    for _ in range(args.nodes):
        cluster.add_node(**node_args)
    return cluster


def launch(command: list[str], env: dict[str, str], log: Path, sampler: Sampler) -> subprocess.Popen:
    process = subprocess.Popen(command, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=str(ROOT))
    sampler.driver_pid = process.pid
    return process


def watch(process: subprocess.Popen, events_path: Path, args: argparse.Namespace, cluster: Any,
          node_args: dict, record: dict[str, Any], kill: bool = True) -> float | None:
    """Wait for the driver; lose a node and kill the driver at their fractions of finished trials.
    Returns when the driver was killed (None when it exited by itself)."""
    lose_at = args.lose_node_at * args.trials if args.lose_node_at else None
    kill_at = args.kill_driver_at * args.trials if args.kill_driver_at and kill else None
    while process.poll() is None:
        time.sleep(0.5)
        done = sum(e["kind"] == "complete" for e in read_events(events_path))
        if lose_at is not None and done >= lose_at and "node_lost_at" not in record:
            lose_node(cluster, node_args, record)
        if kill_at is not None and done >= kill_at:
            process.send_signal(signal.SIGKILL)
            process.wait()
            return time.time()
    return None


def lose_node(cluster: Any, node_args: dict, record: dict[str, Any]) -> None:
    """Kill the first worker node's processes at once; a fresh node joins 5 s later."""
    node = sorted(cluster.worker_nodes, key=lambda n: n.node_id)[0]
    record["node_lost"], record["node_lost_at"] = node.node_id, time.time()
    cluster.remove_node(node, allow_graceful=False)

    def replace() -> None:
        time.sleep(5)
        record["node_added"] = cluster.add_node(**node_args).node_id

    threading.Thread(target=replace, daemon=True).start()


# ---- figures ---------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of ys against xs (None for fewer than 2 distinct xs)."""
    if len(set(xs)) < 2:
        return None
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def measure(record: dict[str, Any], events: list[dict[str, Any]], samples: list[dict[str, Any]],
            run_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    results = json.loads((run_dir / "results.json").read_text())
    trials = results["trials"]
    first_pid = next((e["pid"] for e in events if e["kind"] == "driver_start"), None)
    before = [e for e in events if e["pid"] == first_pid]
    after = [e for e in events if e["pid"] != first_pid]
    record["trials"] = len(trials)
    record["status"] = dict(Counter(t["status"] for t in trials))
    record["utilization"] = utilization(before, record, args)
    record["utilization_whole"] = whole_utilization(trials, events, args)
    record["searcher"] = searcher_figures(events, trials, args)
    record["driver_memory"] = driver_memory(before, args)
    record["processes"] = process_figures(samples, args)
    record["utilization_after_first_wave"] = utilization_after_first_wave(events, record, args)
    record["slot_losses"] = slot_losses(events, record, args)
    record["scheduler_choice"] = scheduler_choice(events)
    record["experiment_save"] = saves(events)
    record["writes"] = writes(events, run_dir)
    if "driver_killed_at" in record:
        record["resume"] = {**resume_figures(before, after, record, trials), **repeated_epochs(run_dir, trials)}
    record["placement"] = placement(events, trials, record, args)
    record["torch_in_trial"] = torch_in_trials(run_dir)
    epochs = sum(e["kind"] == "epoch" for e in events)
    record["cpu_ms_per_epoch"] = {part: round(1000 * seconds / max(1, epochs), 1) for part, seconds in
                                  record["cpu_s"].items()}
    return record


def utilization(events: list[dict[str, Any]], record: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Replayed epochs x epoch_s over slots x (first trial start .. kill, or last epoch)."""
    starts = [e["t"] for e in events if e["kind"] == "start"]
    epochs = [e["t"] for e in events if e["kind"] == "epoch"]
    if not starts or not epochs:
        return {}
    end = record.get("driver_killed_at") or max(epochs)
    work = sum(1 for t in epochs if t <= end) * args.epoch_s
    span = end - min(starts)
    return {"epochs": len(epochs), "span_s": round(span, 1), "trainable_s": round(work, 1),
            "slot_s": round(span * args.concurrent, 1), "ratio": round(work / (span * args.concurrent), 4)}


def utilization_after_first_wave(events: list[dict[str, Any]], record: dict[str, Any],
                                 args: argparse.Namespace) -> dict[str, Any]:
    """The utilization once every slot has started its first trial: replayed epochs ending after
    the ``concurrent``-th trial start plus one epoch, over the slot time from then to the kill (or
    the last epoch). It leaves out the first wave of trial processes starting (on this machine all
    of them share 2 cores; on a cluster each node starts its own); a slot's epoch cut by either
    end of the window counts at most one epoch per slot either way."""
    end = record.get("driver_killed_at") or max((e["t"] for e in events if e["kind"] == "epoch"), default=0)
    starts = sorted(e["t"] for e in events if e["kind"] == "start" and e["t"] <= end)
    if len(starts) < args.concurrent:
        return {}
    begin = starts[args.concurrent - 1] + args.epoch_s
    if end <= begin:
        return {}
    epochs = sum(1 for e in events if e["kind"] == "epoch" and begin < e["t"] <= end)
    return {"first_wave_s": round(starts[args.concurrent - 1] - starts[0], 1), "span_s": round(end - begin, 1),
            "epochs": epochs, "ratio": round(epochs * args.epoch_s / (args.concurrent * (end - begin)), 4)}


def slot_losses(events: list[dict[str, Any]], record: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Where the slot time the utilization misses went (first trial start .. kill), as a share of
    slot time: each trial's start to its first epoch beyond one epoch's length (``setup``), each
    epoch after the first later than its length (``epoch_lateness``: the report's round trip through
    the driver), its last epoch to Tune ending it (``ending``), and slot time no trial held
    (``no_trial``: the first wave starting and each slot passing to the next trial). The driver's
    events, so each is measured where the driver saw it."""
    end = record.get("driver_killed_at") or max((e["t"] for e in events if e["kind"] == "epoch"), default=0)
    trials: dict[str, dict[str, Any]] = {}
    for e in events:
        if e["kind"] in ("start", "epoch", "complete", "error") and e["t"] <= end:
            trial = trials.setdefault(e["trial"], {"epochs": []})
            if e["kind"] == "epoch":
                trial["epochs"].append(e["t"])
            else:
                trial.setdefault(e["kind"], e["t"])
    starts = [t["start"] for t in trials.values() if "start" in t]
    if not starts:
        return {}
    slot = (end - min(starts)) * args.concurrent
    setup = lateness = ending = held = 0.0
    for trial in trials.values():
        if "start" not in trial:
            continue
        ended = trial.get("complete", trial.get("error", end))
        held += ended - trial["start"]
        if trial["epochs"]:
            setup += trial["epochs"][0] - trial["start"] - args.epoch_s
            lateness += sum(b - a - args.epoch_s for a, b in zip(trial["epochs"], trial["epochs"][1:]))
            ending += ended - trial["epochs"][-1]
    late = [b - a - args.epoch_s for t in trials.values() for a, b in zip(t["epochs"], t["epochs"][1:])]
    return {"setup": round(setup / slot, 4), "epoch_lateness": round(lateness / slot, 4),
            "ending": round(ending / slot, 4), "no_trial": round((slot - held) / slot, 4),
            "epoch_lateness_ms_mean": round(1000 * statistics.fmean(late), 1) if late else None,
            "epoch_lateness_ms_p50": round(1000 * (percentile(late, 0.5) or 0), 1) if late else None}


def whole_utilization(trials: list[dict], events: list[dict], args: argparse.Namespace) -> dict[str, Any]:
    """The same over the whole search, the driver's downtime after a kill included."""
    starts = [e["t"] for e in events if e["kind"] == "start"]
    epochs = [e["t"] for e in events if e["kind"] == "epoch"]
    if not starts or not epochs:
        return {}
    work = sum(t["epochs"] for t in trials) * args.epoch_s
    span = max(epochs) - min(starts)
    return {"trial_epochs": sum(t["epochs"] for t in trials), "span_s": round(span, 1),
            "ideal_s": round(work / args.concurrent, 1), "ratio": round(work / (span * args.concurrent), 4)}


def searcher_figures(events: list[dict], trials: list[dict], args: argparse.Namespace) -> dict[str, Any]:
    suggests = [e for e in events if e["kind"] == "suggest"]
    late = [e["s"] * 1000 for e in suggests if e["n"] >= 0.9 * args.trials]
    late_cpu = [e["cpu_s"] * 1000 for e in suggests if e["n"] >= 0.9 * args.trials and "cpu_s" in e]
    ordered = sorted(trials, key=lambda t: t["number"])
    keys = [json.dumps(t["params"], sort_keys=True) for t in ordered]
    first = keys[: args.concurrent]
    return {
        "suggests": len(suggests),
        "late_suggests": len(late),
        "suggest_ms_p50_last10pct": round(percentile(late, 0.5) or 0, 2),
        "suggest_ms_p95_last10pct": round(percentile(late, 0.95) or 0, 2),
        # the driver thread's own CPU time in each suggestion: its wall time less its waits for a
        # core and for the GIL (the suggest runs on Tune's event loop, one thread)
        "suggest_cpu_ms_p50_last10pct": round(percentile(late_cpu, 0.5) or 0, 2),
        "suggest_cpu_ms_p95_last10pct": round(percentile(late_cpu, 0.95) or 0, 2),
        "suggest_ms_max": round(max((e["s"] * 1000 for e in suggests), default=0), 1),
        "duplicates_first_concurrent": len(first) - len(set(first)),
        "duplicates_all": len(keys) - len(set(keys)),
    }


def driver_memory(events: list[dict], args: argparse.Namespace) -> dict[str, Any]:
    completes = [e for e in events if e["kind"] == "complete"]
    xs = [float(i + 1) for i in range(len(completes))]
    ys = [e["rss_kb"] / 1024 for e in completes]
    steady = [(x, y) for x, y in zip(xs, ys) if x > args.concurrent]
    per_trial = slope([x for x, _ in steady], [y for _, y in steady]) if len(steady) > 1 else None
    hwm_at = {x: e["hwm_kb"] / 1024 for x, e in zip(xs, completes)}
    hwm_growth = None
    if len(steady) > 1:
        (x0, _), (x1, _) = steady[0], steady[-1]
        hwm_growth = (hwm_at[x1] - hwm_at[x0]) / (x1 - x0)
    return {"rss_mb_first": round(ys[0], 1) if ys else None, "rss_mb_last": round(ys[-1], 1) if ys else None,
            "rss_mb_per_trial_slope": round(per_trial, 4) if per_trial is not None else None,
            "peak_mb_per_trial": round(hwm_growth, 4) if hwm_growth is not None else None,
            "peak_mb_end": round(completes[-1]["hwm_kb"] / 1024, 1) if completes else None}


def process_figures(samples: list[dict], args: argparse.Namespace) -> dict[str, Any]:
    if not samples:
        return {}
    keys = [k for k in samples[0] if k != "t"]
    peak = {k: round(max(s[k] for s in samples), 1) for k in keys}
    return {"peak": peak, "samples": len(samples),
            "trial_worker_rss_mb_per_concurrent_trial": round(peak["trial_workers_rss_mb"] / args.concurrent, 1),
            "trial_worker_pss_mb_per_concurrent_trial": round(peak["trial_workers_pss_mb"] / args.concurrent, 1),
            "driver_tree_rss_mb_per_concurrent_trial": round(peak["driver_rss_mb"] / args.concurrent, 2)}


def scheduler_choice(events: list[dict]) -> dict[str, Any]:
    """The scheduler's ``choose_trial_to_run`` in the first driver, as of its last trial end:
    calls, seconds in all, and calls per epoch."""
    ends = [e for e in events if e["kind"] == "complete" and "choices" in e and e["pid"] == events[0]["pid"]]
    if not ends:
        return {}
    epochs = sum(1 for e in events if e["kind"] == "epoch" and e["t"] <= ends[-1]["t"])
    return {"calls": ends[-1]["choices"], "total_s": round(ends[-1]["choice_s"], 3),
            "calls_per_epoch": round(ends[-1]["choices"] / max(epochs, 1), 2),
            "us_per_call": round(1e6 * ends[-1]["choice_s"] / max(ends[-1]["choices"], 1), 2)}


def saves(events: list[dict]) -> dict[str, Any]:
    found = [e for e in events if e["kind"] == "experiment_save"]
    if not found:
        return {}
    last = found[-10:]
    return {"count": len(found), "total_s": round(sum(e["s"] for e in found), 2),
            "last_ms_mean": round(statistics.fmean(e["s"] for e in last) * 1000, 1), "last_trials": last[-1]["n"],
            "max_ms": round(max(e["s"] for e in found) * 1000, 1)}


def writes(events: list[dict], run_dir: Path) -> dict[str, Any]:
    """The results' writes; and the user's wait at the end: from the last trial's end to the
    report written (Tune's last save and its ResultGrid, W&B's runs closed, the summary built)."""
    found = {e["kind"]: e for e in events if e["kind"] in ("write_results", "write_report", "finish")}
    ends = [e["t"] for e in events if e["kind"] in ("complete", "error")]
    written = found.get("write_report", {}).get("t")
    return {"after_last_trial_s": round(written - max(ends), 2) if written and ends else None,
            "finish_s": round(found.get("finish", {}).get("s", float("nan")), 2),
            "results_and_report_s": round(found.get("write_results", {}).get("s", float("nan")), 2),
            "report_s": round(found.get("write_report", {}).get("s", float("nan")), 2),
            "report_mb": round((run_dir / "report.html").stat().st_size / 2**20, 2),
            "results_json_mb": round((run_dir / "results.json").stat().st_size / 2**20, 2)}


def resume_figures(before: list[dict], after: list[dict], record: dict, trials: list[dict]) -> dict[str, Any]:
    done_before = {e["trial"] for e in before if e["kind"] == "complete"}
    rerun_after = {e["trial"] for e in after if e["kind"] == "epoch"}  # an epoch trained again
    first_epoch = min((e["t"] for e in after if e["kind"] == "epoch"), default=None)
    restored = min((e["t"] for e in after if e["kind"] == "suggest"), default=None)
    finished = {t["trial_id"] for t in trials if t["status"] in ("completed", "pruned", "early_stopped")}
    relaunched = record["resume_relaunched_at"]
    running = {e["trial"] for e in before if e["kind"] == "start"} - {
        e["trial"] for e in before if e["kind"] in ("complete", "error")}  # at the kill
    # an epoch missing from a trial's history, or no history at all: the results misread the trial
    gaps = [t["trial_id"] for t in trials if t["status"] != "failed" and
            (not t["history"] or [row.get("epoch") for row in t["history"]] != list(range(1, len(t["history"]) + 1)))]
    return {
        "finished_before_kill": len(done_before),
        "lost": len(done_before - finished),
        "histories_with_gaps": len(gaps),
        "rerun": len(done_before & rerun_after),
        "restored_without_rerun": len(done_before & {e["trial"] for e in after if e["kind"] == "start"} - rerun_after),
        "running_at_kill": len(running),
        "running_resumed_under_own_id": len(running & {e["trial"] for e in after if e["kind"] == "start"}),
        "to_first_suggest_s": round(restored - relaunched, 1) if restored else None,
        "to_first_epoch_s": round(first_epoch - relaunched, 1) if first_epoch else None,
    }


def repeated_epochs(run_dir: Path, trials: list[dict]) -> dict[str, int]:
    """The results' trials whose ``result.json`` holds an iteration twice (a trial resumed from an
    older checkpoint than its last written epoch), and the orphan trial folders: started before a
    kill, not in the resumed state (the searcher suggests their configuration again as a new trial)."""
    listed = {t["trial_id"] for t in trials}
    twice, orphans = 0, 0
    for path in run_dir.glob("*/result.json"):
        trial = next((tid for tid in listed if f"_{tid}_" in path.parent.name), None)
        if trial is None:
            orphans += 1
            continue
        iterations = []
        for line in path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                iterations.append(json.loads(line).get("training_iteration"))
        twice += len(iterations) != len(set(iterations))
    return {"result_files_with_an_epoch_twice": twice, "orphan_trial_folders": orphans}


def placement(events: list[dict], trials: list[dict], record: dict, args: argparse.Namespace) -> dict[str, Any]:
    """Per node trials; the most trials sharing one logical GPU at one instant (from epochs)."""
    per_node = Counter(t.get("node_id") for t in trials)
    holders: dict[tuple[str, str], dict[tuple[str, int], tuple[float, float]]] = {}
    for e in events:
        if e["kind"] == "epoch" and e.get("gpus"):
            for gpu in str(e["gpus"]).split(","):
                holder = (e["trial"], e["pid"])
                span = holders.setdefault((e["node"], gpu), {}).get(holder, (e["t"], e["t"]))
                holders[(e["node"], gpu)][holder] = (min(span[0], e["t"]), max(span[1], e["t"]))
    most = 0
    for spans in holders.values():
        edges = sorted([(a, 1) for a, _ in spans.values()] + [(b, -1) for _, b in spans.values()],
                       key=lambda ab: (ab[0], -ab[1]))
        level = 0
        for _, step in edges:
            level += step
            most = max(most, level)
    out = {"nodes_used": len(per_node), "trials_per_node": sorted(per_node.values(), reverse=True),
           "most_trials_on_one_gpu": most, "allowed_per_gpu": math.floor(1 / args.gpus_per_trial + 1e-9)
           if args.gpus_per_trial else None}
    if "node_lost" in record:
        retried = [t for t in trials if t.get("retries")]
        out["node_loss"] = {"retried_trials": len(retried),
                            "retried_finished": sum(t["status"] != "failed" for t in retried),
                            "failed": sum(t["status"] == "failed" for t in trials)}
    return out


def torch_in_trials(run_dir: Path) -> dict[str, int]:
    """How many trial epochs reported torch loaded in their process."""
    found: Counter = Counter()
    for path in run_dir.glob("*/result.json"):
        for line in path.read_text().splitlines():
            try:
                found[str(json.loads(line).get("torch_in_trial"))] += 1
            except json.JSONDecodeError:
                continue
    return dict(found)


def searcher_probe(args: argparse.Namespace) -> dict[str, Any]:
    """Optuna alone, no Ray: ``--trials`` finished trials of the bench space (random points scored
    by the replay's curve model), then ``--concurrent`` asks left pending, as a wide cluster makes
    them; per ``constant_liar`` setting of Optuna's TPE, and for lobsearch's (``tpe.Sampler``,
    constant liar): ask latency p50/p95, exact duplicate configurations and near duplicates
    (replay distance < 0.02) among the pending ones; and whether lobsearch's asks equal Optuna's."""
    import optuna
    from optuna.samplers._tpe import _truncnorm

    from lobsearch import tpe
    from lobsearch.replay import load_replay, searched_names
    from lobsearch.space import load_space

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = load_space(SPACE)
    replay = load_replay(args.source, metric="val_macro_f1", searched=searched_names(space), draw="model")
    seed_study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(args.trials):
        trial = seed_study.ask()
        params = {**space.define_by_run(trial), **trial.params}
        rows, _ = replay.curve_for(params, args.epochs)
        seed_study.tell(trial, max(r["val_macro_f1"] for r in rows))
    def ask_pending(sampler: optuna.samplers.BaseSampler) -> tuple[list[float], list[dict]]:
        study = optuna.create_study(direction="maximize", sampler=sampler)
        study.add_trials(seed_study.trials)
        pending, latencies = [], []
        for _ in range(args.concurrent):
            started = time.perf_counter()
            trial = study.ask()
            pending.append({**space.define_by_run(trial), **trial.params})
            latencies.append((time.perf_counter() - started) * 1000)
        return latencies, pending

    out, asked = {}, {}
    _truncnorm._log_ndtr = tpe._OPTUNA_LOG_NDTR  # Optuna's own, whatever an earlier Sampler installed
    for name, make in (("constant_liar_false", lambda: optuna.samplers.TPESampler(seed=1, n_startup_trials=5,
                                                                                  constant_liar=False)),
                       ("constant_liar_true", lambda: optuna.samplers.TPESampler(seed=1, n_startup_trials=5,
                                                                                 constant_liar=True)),
                       ("lobsearch", lambda: tpe.Sampler(seed=1, n_startup_trials=5, constant_liar=True))):
        latencies, pending = ask_pending(make())
        asked[name] = pending
        keys = [json.dumps(p, sort_keys=True) for p in pending]
        near = sum(any(replay.distance(p, q) < 0.02 for q in pending[:i]) for i, p in enumerate(pending))
        out[name] = {
            "ask_ms_p50": round(percentile(latencies, 0.5), 1), "ask_ms_p95": round(percentile(latencies, 0.95), 1),
            "duplicates": len(keys) - len(set(keys)), "near_duplicates": near}
    # lobsearch's sampler (tuner._searcher) against Optuna's with the same settings: the same asks
    out["lobsearch"]["same_suggestions_as_optuna"] = asked["lobsearch"] == asked["constant_liar_true"]
    out["lobsearch"]["optuna_over_lobsearch_p50"] = round(
        out["constant_liar_true"]["ask_ms_p50"] / max(out["lobsearch"]["ask_ms_p50"], 1e-9), 2)
    return {"finished": args.trials, "pending": args.concurrent, **out}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["driver"]:
        return driver(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--concurrent", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--epoch-s", type=float, default=1.0)
    parser.add_argument("--nodes", type=int, default=8)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--gpus-per-trial", type=float, default=1.0)
    parser.add_argument("--wandb", default="offline", choices=["offline", "disabled"])
    parser.add_argument("--curves", default="model", choices=["recorded", "model"])
    parser.add_argument("--kill-driver-at", type=float, default=0.95, help="fraction of trials finished; 0: never")
    parser.add_argument("--lose-node-at", type=float, default=0.0, help="fraction of trials finished; 0: never")
    parser.add_argument("--fresh-ray-on-resume", action="store_true",
                        help="resume on a new simulated cluster (a new Ray session), not the one the killed driver used")
    parser.add_argument("--source", type=Path, default=SOURCE)
    parser.add_argument("--work", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--searcher-only", action="store_true", help="only the Optuna probe (no cluster)")
    parser.add_argument("--no-searcher-probe", action="store_true", help="skip the Optuna probe")
    args = parser.parse_args(argv)
    probe = {} if args.no_searcher_probe else {"searcher_probe": searcher_probe(args)}
    record = probe if args.searcher_only else {**run(args), **probe}
    text = json.dumps(record, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
