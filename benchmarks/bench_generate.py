"""Generation throughput: the plain loop vs Ray Data actor pools of 1, 2 and 4 actors, each writing shards on the
driver or from the workers.

Run: ``python benchmarks/bench_generate.py`` (``--videos``, ``--clips-per-video``, ``--nframes``, ``--size``,
``--raft-iterations``, ``--actors``, ``--repeats``).

Every run generates the same clips of the bundled sample videos with the same models — random ProPainter (the
prior and the ``blur`` kind) and a tiny random DiffuEraser (the on-policy ``diffueraser`` kind, 2 seeds) — and the
same config; only the executor differs:

- loop: :func:`vipo.generate.run_in_process`, the stages and the writes one clip at a time in this process;
- driver-N: :func:`vipo.generate.adapter.run_on_ray` with ``write_on_driver``: N actors, every encoded result
  streamed to the driver, which writes the shards (the design before worker writes);
- worker-N: ``run_on_ray`` as the job runs it: N actors, write tasks put the shards into the store and send the
  driver commit records only.

Every process runs torch with one thread, so actors scale across cores rather than inside one. Reported: samples/s
end to end (model loading and actor start-up included; Ray itself is started before the clock) and at steady
state (from the first commit to the last, per committed sample), each as a ratio to the loop, and the bytes that
reached the driver (pickled results or commit records). The runs are interleaved ``--repeats`` times and each
figure is the best of its repeats (the run least disturbed by other processes).
"""

from __future__ import annotations

import argparse
import os
import pickle
import tempfile
import time
from dataclasses import dataclass, fields
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ray  # noqa: E402
import torch  # noqa: E402

from jobs.generate import GenerateJobConfig, HoleScorer  # noqa: E402
from vipo.config import validate_config  # noqa: E402
from vipo.data import SAMPLE_DATA_ROOT  # noqa: E402
from vipo.generate import ShardWriteStage, generate, run_in_process  # noqa: E402
from vipo.generate.adapter import run_on_ray  # noqa: E402
from vipo.models.tiny import write_tiny_weights  # noqa: E402


@dataclass(frozen=True)
class _CountingWriter(ShardWriteStage):
    """The driver-side writer of the driver-write baseline: counts the result bytes that crossed to the driver."""

    received: list | None = None

    def write(self, results):
        self.received.append(sum(len(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)) for result in results))
        return super().write(results)


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
    """The run's executor, recording when each commit arrived, the pickled size of the finished results (what a
    driver that writes receives) and of the commit records (what it receives when the workers write)."""

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
            arrivals.append((time.perf_counter(), commit.rows))
            yield commit

    arrivals: list[tuple[float, int]] = []
    run.arrivals = arrivals
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--clips-per-video", type=int, default=2)
    parser.add_argument("--nframes", type=int, default=8)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--raft-iterations", type=int, default=4)
    parser.add_argument("--actors", type=int, nargs="*", default=[1, 2, 4], help="pool sizes; none: the loop only")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.actors:
        ray.init(num_cpus=max(args.actors) + 1, include_dashboard=False,
                 runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    runs = [("loop", "loop", 0)] + [(f"{mode}-{n}", mode, n) for n in args.actors for mode in ("driver", "worker")]
    best: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-generate-") as tmp:
        weights = Path(tmp) / "tiny-diffueraser"
        write_tiny_weights(weights, seed=0)
        for repeat in range(args.repeats):
            for name, mode, actors in runs:
                config = _config(args, Path(tmp) / f"{name}-{repeat}", weights,
                                 "local" if mode == "loop" else "ray", max(actors, 1))
                result_bytes: list[int] = []
                commit_bytes: list[int] = []
                executor = _executor(mode, result_bytes, commit_bytes)
                start = time.perf_counter()
                summary = generate(config, HoleScorer.from_config(config.scoring), executor=executor)
                wall = time.perf_counter() - start
                samples = summary["samples_written_now"]
                (first, _), (last, _) = executor.arrivals[0], executor.arrivals[-1]
                steady = sum(rows for _, rows in executor.arrivals[1:]) / (last - first) if last > first else 0.0
                previous = best.get(name, [0.0, 0.0, 0.0])
                driver_bytes = sum(commit_bytes) if mode == "worker" else sum(result_bytes)
                best[name] = [max(previous[0], samples / wall), max(previous[1], steady), driver_bytes]
                if mode == "loop":
                    print(f"per sample: results {sum(result_bytes) / samples:,.0f} B, commit records "
                          f"{sum(commit_bytes) / samples:,.0f} B (what reaches a driver that writes vs one that "
                          f"does not)")
    if args.actors:
        ray.shutdown()
    loop_e2e, loop_steady, _ = best["loop"]
    print(f"\nsamples: {samples} ({args.videos} videos x {args.clips_per_video} clips x 2 holes), {args.nframes} "
          f"frames at {args.size}x{args.size}; kinds blur + diffueraser (2 seeds); ProPainter RAFT iterations "
          f"{args.raft_iterations}; {os.cpu_count()} CPUs, 1 torch thread per process; best of {args.repeats}")
    print(f"{'run':<9} {'actors':>6} {'samples/s':>10} {'ratio':>6} {'steady samples/s':>17} {'ratio':>6} "
          f"{'bytes to driver':>16}")
    for name, _, actors in runs:
        e2e, steady, received = best[name]
        print(f"{name:<9} {actors:>6} {e2e:>10.3f} {e2e / loop_e2e:>6.2f} {steady:>17.3f} "
              f"{steady / loop_steady if loop_steady else float('nan'):>6.2f} {received:>16,d}")


if __name__ == "__main__":
    main()
