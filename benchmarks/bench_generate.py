"""Generation throughput: the plain loop vs Ray Data actor pools of 1, 2 and 4 actors, each writing shards on the
driver or from the workers; and P3, 2 worker-writing actors vs the loop at steady state (goal ≥ 1.8×).

Run: ``python benchmarks/bench_generate.py`` (``--videos``, ``--clips-per-video``, ``--nframes``, ``--size``,
``--raft-iterations``, ``--actors``, ``--modes``, ``--repeats``); P3 alone: ``--modes worker --actors 2``.

Every run generates the same clips of the bundled sample videos with the same models — random ProPainter (the
prior and the ``blur`` kind) and a tiny random DiffuEraser (the on-policy ``diffueraser`` kind, 2 seeds) — and the
same config; only the executor differs:

- loop: :func:`vipo.generate.run_in_process`, the stages and the writes one clip at a time in this process;
- driver-N: :func:`vipo.generate.adapter.run_on_ray` with ``write_on_driver``: N actors, every encoded result
  streamed to the driver, which writes the shards (the design before worker writes);
- worker-N: ``run_on_ray`` as the job runs it: N actors, write tasks put the shards into the store and send the
  driver commit records only.

Every process runs torch with one thread, so actors scale across cores rather than inside one; Ray starts once,
locally, in its own temp dir, before any clock. Reported per run, as ratios to the loop of the same process:

- samples/s end to end (model loading and actor start-up included);
- steady samples/s: the rows committed after the first N commits (N = actors: each actor's first clip carries
  its start-up) over the time from the N-th commit to the last;
- where the time goes: ``busy``, the stage seconds the workers booked for those steady commits over N × that
  time (the rest is Ray, pickling, write tasks, or waiting for a core; above 100%: commits reached the driver
  bunched, so the window is too short), the driver's CPU seconds per sample, and the stages' seconds per clip
  (decode, each kind, ProPainter, score, encode; wall time, so a busy machine lengthens them) next to the loop's;
- stage-bound samples/s: N actors x samples per clip / stage seconds per clip, the most the pool can deliver when
  it never waits between clips (an upper bound on steady; P3 is judged on the lower of the two);
- the bytes that reached the driver (pickled results or commit records) and the 1-minute load average after the
  run (on a shared machine other processes take cores: compare ``nproc`` with the load).

The runs are interleaved ``--repeats`` times; each run's figures are from its repeat with the best steady rate
(the one least disturbed by other processes).
"""

from __future__ import annotations

import argparse
import math
import os
import pickle
import shutil
import tempfile
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import psutil  # noqa: E402
import ray  # noqa: E402
import torch  # noqa: E402

from jobs.generate import GenerateJobConfig, HoleScorer  # noqa: E402
from vipo.config import validate_config  # noqa: E402
from vipo.data import SAMPLE_DATA_ROOT  # noqa: E402
from vipo.generate import ShardWriteStage, generate, run_in_process  # noqa: E402
from vipo.generate.adapter import run_on_ray  # noqa: E402
from vipo.models.tiny import write_tiny_weights  # noqa: E402

P3_GOAL = 1.8
STEPS = ("decode", "propainter", "blur", "diffueraser", "score", "encode")
"""The stage steps shown per clip, in pipeline order (ProPainter is shared by both kinds)."""


@dataclass(frozen=True)
class _CountingWriter(ShardWriteStage):
    """The driver-side writer of the driver-write baseline: counts the result bytes that crossed to the driver."""

    received: list | None = None

    def write(self, results):
        self.received.append(sum(len(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)) for result in results))
        return super().write(results)


@dataclass
class _Figures:
    """One run's measurements."""

    samples: int
    wall: float
    steady: float
    busy: float
    stage_bound: float
    driver_cpu: float
    driver_bytes: int
    seconds_per_clip: dict[str, float] = field(default_factory=dict)
    load: float = 0.0

    @property
    def end_to_end(self) -> float:
        return self.samples / self.wall


def _config(args: argparse.Namespace, output_dir: Path, weights: Path, executor: str, actors: int):
    return validate_config(GenerateJobConfig, {
        "output_dir": str(output_dir),
        "seed": 0,
        "sources": [{"kind": "davis", "root": str(SAMPLE_DATA_ROOT), "split": "train"},
                    {"kind": "davis", "root": str(SAMPLE_DATA_ROOT), "split": "val", "name": "davis-val"}],
        "max_videos": args.videos,
        "clips_per_video": args.clips_per_video,
        "masks_per_clip": 2,
        "rows_per_shard": 2,  # one clip window (2 holes) per shard: a commit per clip
        "sampling": {"nframes": args.nframes, "resolution": args.size},
        "kinds": [{"kind": "blur"}, {"kind": "diffueraser", "seeds": [0, 1]}],
        "models": {"propainter": {"random_init": 0, "options": {"raft_iterations": args.raft_iterations}},
                   "diffueraser": {"weights": str(weights)}},
        "stages": [{"name": "inpaint", "kinds": ["blur", "diffueraser"], "min_size": actors, "max_size": actors,
                    "num_cpus": 1}],
        "executor": executor,
        "scoring": {"allow_random_lpips_backbone": True},
        "tracking": {"enabled": False},
    })


def _executor(mode: str, result_bytes: list[int], commit_bytes: list[int]):
    """The run's executor, recording when each commit arrived (with its rows and the stage seconds behind it), the
    pickled size of the finished results (what a driver that writes receives) and of the commit records (what it
    receives when the workers write)."""

    def run(work, stages, writer):
        counting = _CountingWriter(**{f.name: getattr(writer, f.name) for f in fields(ShardWriteStage)},
                                   received=result_bytes)
        if mode == "loop":
            commits = run_in_process(work, stages, counting)
        elif mode == "driver":
            commits = run_on_ray(work, stages, counting, write_on_driver=True)
        else:
            commits = run_on_ray(work, stages, writer)
        for commit in commits:
            commit_bytes.append(len(pickle.dumps(commit, protocol=pickle.HIGHEST_PROTOCOL)))
            arrivals.append((time.perf_counter(), commit.rows, sum(commit.seconds.values())))
            yield commit

    arrivals: list[tuple[float, int, float]] = []
    run.arrivals = arrivals
    return run


def steady_state(arrivals: list[tuple[float, int, float]], actors: int) -> tuple[float, float]:
    """(samples/s, busy fraction) after the first ``actors`` commits: in lockstep, N actors commit N clips per
    round, so counting from the N-th commit drops the start-up round without crediting its late siblings."""
    if len(arrivals) <= actors:
        return math.nan, math.nan
    start, end = arrivals[actors - 1][0], arrivals[-1][0]
    later = arrivals[actors:]
    span = end - start
    return sum(rows for _, rows, _ in later) / span, sum(seconds for _, _, seconds in later) / (actors * span)


def _measure(args, tmp: Path, weights: Path, name: str, mode: str, actors: int) -> _Figures:
    config = _config(args, tmp / name, weights, "local" if mode == "loop" else "ray", max(actors, 1))
    result_bytes: list[int] = []
    commit_bytes: list[int] = []
    executor = _executor(mode, result_bytes, commit_bytes)
    start, cpu_start = time.perf_counter(), time.process_time()
    summary = generate(config, HoleScorer.from_config(config.scoring), executor=executor)
    wall, driver_cpu = time.perf_counter() - start, time.process_time() - cpu_start
    samples = summary["samples_written_now"]
    steady, busy = steady_state(executor.arrivals, max(actors, 1))
    timed = summary["clips_processed"] - summary["clips_failed"]
    stage_bound = max(actors, 1) * samples / timed / sum(summary["seconds_per_clip"].values())
    print(f"{name}: commits at {', '.join(f'{at - start:.0f}' for at, _, _ in executor.arrivals)} s")
    if mode == "loop":
        print(f"per sample: results {sum(result_bytes) / samples:,.0f} B, commit records "
              f"{sum(commit_bytes) / samples:,.0f} B (what reaches a driver that writes vs one that does not)")
    shutil.rmtree(tmp / name)
    return _Figures(samples, wall, steady, busy, stage_bound, driver_cpu / samples,
                    sum(commit_bytes) if mode == "worker" else sum(result_bytes) if mode == "driver" else 0,
                    summary["seconds_per_clip"], os.getloadavg()[0])


def _start_ray(actors: int, temp_dir: str, attempts: int = 5) -> None:
    """A new local instance (never a cluster named by RAY_ADDRESS); one logical CPU per actor plus the writes'."""
    for attempt in range(attempts):
        try:
            ray.init(address="local", num_cpus=actors + 1, include_dashboard=False, _temp_dir=temp_dir,
                     log_to_driver=False, runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
            return
        except Exception as err:
            # Ray gives a new node a fixed 30 s to register; on a busy machine its processes can miss that.
            if "timed out during startup" not in str(err) or attempt == attempts - 1:
                raise
            ray.shutdown()
            # Ray's shutdown does not know the failed node's processes (the only ones this process has started yet).
            for child in psutil.Process().children(recursive=True):
                child.terminate()


def _steadier(figures: _Figures, than: _Figures) -> bool:
    """The better repeat: the higher steady rate; a NaN one (too few commits to tell) loses."""
    return math.isnan(than.steady) or figures.steady > than.steady


def _ratio(value: float, baseline: float) -> float:
    return value / baseline if baseline else math.nan


def _report(args, runs: list[tuple[str, str, int]], best: dict[str, _Figures]) -> None:
    loop = best["loop"]
    print(f"\nsamples: {loop.samples} ({args.videos} videos x {args.clips_per_video} clips x 2 holes), "
          f"{args.nframes} frames at {args.size}x{args.size}; kinds blur + diffueraser (2 seeds); ProPainter RAFT "
          f"iterations {args.raft_iterations}; {os.cpu_count()} CPUs, 1 torch thread per process; best of "
          f"{args.repeats}")
    print(f"{'run':<9} {'actors':>6} {'samples/s':>10} {'ratio':>6} {'steady/s':>9} {'ratio':>6} {'busy':>5} "
          f"{'stage-bound/s':>13} {'ratio':>6} {'driver CPU s/sample':>19} {'bytes to driver':>16} {'load':>5}")
    for name, _, actors in runs:
        f = best[name]
        print(f"{name:<9} {actors:>6} {f.end_to_end:>10.3f} {_ratio(f.end_to_end, loop.end_to_end):>6.2f} "
              f"{f.steady:>9.3f} {_ratio(f.steady, loop.steady):>6.2f} {f.busy:>5.0%} {f.stage_bound:>13.3f} "
              f"{_ratio(f.stage_bound, loop.stage_bound):>6.2f} {f.driver_cpu:>19.2f} {f.driver_bytes:>16,d} "
              f"{f.load:>5.1f}")
    print("\nstage seconds per clip (in the workers; the loop's in this process)")
    print(f"{'run':<9} " + " ".join(f"{step:>11}" for step in STEPS))
    for name, _, _ in runs:
        per_clip = best[name].seconds_per_clip
        print(f"{name:<9} " + " ".join(f"{per_clip.get(step, 0.0):>11.2f}" for step in STEPS))
    if "worker-2" in best:
        pool = best["worker-2"]
        ratio = _ratio(min(pool.steady, pool.stage_bound), min(loop.steady, loop.stage_bound))
        verdict = "reached" if ratio >= P3_GOAL else "NOT reached"
        print(f"\nP3: 2 actors (worker writes) vs the loop at steady state (the lower of steady and stage-bound): "
              f"{ratio:.2f}x, goal >= {P3_GOAL}x {verdict} (load average {pool.load:.1f} on {os.cpu_count()} CPUs)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--clips-per-video", type=int, default=2)
    parser.add_argument("--nframes", type=int, default=8)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--raft-iterations", type=int, default=4)
    parser.add_argument("--actors", type=int, nargs="*", default=[1, 2, 4], help="pool sizes; none: the loop only")
    parser.add_argument("--modes", nargs="+", choices=["driver", "worker"], default=["driver", "worker"],
                        help="who writes the shards in the Ray runs")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"load average (1, 5, 15 min) at start: {', '.join(f'{v:.1f}' for v in os.getloadavg())} on "
          f"{os.cpu_count()} CPUs")
    runs = [("loop", "loop", 0)] + [(f"{mode}-{n}", mode, n) for n in args.actors for mode in args.modes]
    best: dict[str, _Figures] = {}
    ray_temp = tempfile.mkdtemp(prefix="vipo-bench-ray-", dir="/tmp")  # short: Ray's socket paths are limited
    try:
        if args.actors:
            _start_ray(max(args.actors), ray_temp)
        with tempfile.TemporaryDirectory(prefix="bench-generate-") as tmp:
            weights = Path(tmp) / "tiny-diffueraser"
            write_tiny_weights(weights, seed=0)
            for _ in range(args.repeats):
                for name, mode, actors in runs:
                    figures = _measure(args, Path(tmp), weights, name, mode, actors)
                    if name not in best or _steadier(figures, best[name]):
                        best[name] = figures
    finally:
        if args.actors:
            ray.shutdown()
        shutil.rmtree(ray_temp, ignore_errors=True)
    _report(args, runs, best)


if __name__ == "__main__":
    main()
