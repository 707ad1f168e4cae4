"""Generation on a real 2-node Ray cluster (a ``ray start --head`` and a worker node, separate processes): the
stage actors and the write tasks are pinned to the worker node by a custom resource and write their shards into a
folder both nodes share; the driver (its own process, as ``ray job submit`` would run it) only lists them. A driver
killed mid-run is resumed into every clip exactly once, with the rows of an uninterrupted in-process run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from jobs.generate import GenerateJobConfig, HoleScorer
from vipo.config import validate_config
from vipo.data import SAMPLE_DATA_ROOT, Manifest, open_shard
from vipo.generate import generate

if TYPE_CHECKING:
    from servers import RayNode

DRIVER = """
import json, sys
import ray
from jobs.generate import GenerateJobConfig, HoleScorer
from vipo.config import validate_config
from vipo.generate import generate
from vipo.generate.adapter import run_on_ray

config = validate_config(GenerateJobConfig, json.loads(sys.argv[1]))
ray.init(address=sys.argv[2])
commits = []

def placement(commit):
    return {"writer": commit.node, "actors": [d["inpaint.node"] for d in commit.devices.values()]}

def recording(work, stages, writer):
    for commit in run_on_ray(work, stages, writer):
        commits.append(commit)
        yield commit
        # Resumed once generate() has taken the commit into its manifest.
        print("commit " + json.dumps(placement(commit)), flush=True)

summary = generate(config, HoleScorer.from_config(config.scoring), resume=sys.argv[3] == "resume", executor=recording)
workers = [n["NodeID"] for n in ray.nodes() if n["Alive"] and "worker_node" in n["Resources"]]
print("RESULT " + json.dumps({
    "driver": ray.get_runtime_context().get_node_id(), "workers": workers,
    "placements": [placement(c) for c in commits], "written": summary["samples_written"]}), flush=True)
"""


def _data(output_dir: Path, executor: str) -> dict:
    return {
        "output_dir": str(output_dir),
        "seed": 5,
        "sources": [{"kind": "davis", "root": str(SAMPLE_DATA_ROOT)}],
        "max_videos": 2,
        "clips_per_video": 2,
        "sampling": {"nframes": 4, "resolution": 32},
        "kinds": [{"kind": "blur"}],
        "models": {"propainter": {"random_init": 0, "options": {"raft_iterations": 1}}},
        "stages": [{"name": "inpaint", "kinds": ["blur"], "min_size": 1, "max_size": 2, "num_cpus": 1,
                    "resources": {"worker_node": 1}}],
        "writer": {"num_cpus": 0.25, "resources": {"worker_node": 0.25}},
        "rows_per_shard": 1,
        "executor": executor,
        "scoring": {"allow_random_lpips_backbone": True},
        "tracking": {"enabled": False},
    }


def _driver(data: dict, head: RayNode, mode: str) -> subprocess.Popen:
    env = {**head.client_env, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}  # with the head's auth token
    return subprocess.Popen([sys.executable, "-c", DRIVER, json.dumps(data), head.address, mode],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)


def _rows(folder: Path) -> dict[str, dict]:
    rows = {}
    manifest = Manifest.load(folder, adopt_unlisted=False)
    for path in manifest.shard_paths():
        for row in open_shard(path).read().to_pylist():
            assert manifest.clips[row["clip_id"]]["shard"] == path.name
            row.pop("created_at")
            rows[row["clip_id"]] = row
    return rows


@pytest.mark.slow
@pytest.mark.timeout(1800)  # two drivers, each up to 15 minutes on a loaded 2-core machine
def test_worker_node_actors_write_shards_the_driver_lists_and_a_killed_driver_resumes_exactly_once(ray_head,
                                                                                                  tmp_path):
    from servers import RayNode

    worker = RayNode(Path(tempfile.mkdtemp(prefix="vipo-ray-w-")), num_cpus=2, resources='{"worker_node": 4}',
                     head_address=ray_head.address, auth_token=ray_head.auth_token).start()
    try:
        shared = tmp_path / "shared"  # one folder both nodes reach (a shared mount on a real cluster)
        data = _data(shared / "run", "ray")
        first = _driver(data, ray_head, "fresh")
        lines = []
        for line in first.stdout:  # kill the driver (like a lost head job) once the first shard is recorded
            lines.append(line)
            if line.startswith("commit"):
                os.killpg(first.pid, signal.SIGKILL)
                break
        first.wait(timeout=60)
        assert lines and lines[-1].startswith("commit"), "".join(lines[-30:])
        shards = shared / "run" / "shards"
        assert 1 <= len(Manifest.load(shards, adopt_unlisted=False).shards) < 4
        assert json.loads((shards / "lease.json").read_text())["pid"] == first.pid  # left by the killed driver

        resumed = _driver(data, ray_head, "resume")  # takes the dead driver's lease over
        out, _ = resumed.communicate(timeout=900)
        assert resumed.returncode == 0, out[-3000:]
        assert "taking over the stale lease" in out
        # Ray's log monitor may print more lines after ours; the result is the one line that starts with RESULT.
        (result,) = [json.loads(line[len("RESULT "):]) for line in out.splitlines() if line.startswith("RESULT ")]
        (worker_id,) = result["workers"]
        assert result["driver"] != worker_id and result["written"] == 4
        # The killed driver's write tasks may still land shards, which the resumed driver adopts; it may then have
        # nothing left to run. Every shard recorded by either driver was made and written on the worker node.
        placements = [json.loads(lines[-1][len("commit "):]), *result["placements"]]
        assert {p["writer"] for p in placements} == {worker_id}
        assert {node for p in placements for node in p["actors"]} == {worker_id}
        rows = _rows(shards)
    finally:
        worker.stop()

    local = validate_config(GenerateJobConfig, _data(tmp_path / "local", "local"))
    generate(local, HoleScorer.from_config(local.scoring))
    assert rows == _rows(tmp_path / "local" / "shards")  # every clip once, the values of an uninterrupted run
