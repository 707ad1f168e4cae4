"""Config loading: YAML + dotted overrides into typed objects, one-line errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import Field

from vipo.config import Config, ConfigError, ExistingPath, JobConfig, apply_overrides, config_hash, load_config


class _Data(Config):
    nframes: int = Field(22, ge=1)
    dilation: int = Field(0, ge=0)
    root: ExistingPath | None = None


class _Job(JobConfig):
    data: _Data = _Data()
    lr: float = Field(1e-5, gt=0)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


def test_yaml_and_dotted_overrides(tmp_path):
    path = _write(tmp_path, "output_dir: out\ndata:\n  nframes: 10\n")
    cfg = load_config(_Job, path, ["data.dilation=3", "lr=2e-4", "seed=7"])
    assert cfg.data.nframes == 10 and cfg.data.dilation == 3 and cfg.lr == 2e-4 and cfg.seed == 7
    # A relative output_dir resolves against the working directory.
    assert cfg.output_dir == (Path.cwd() / "out").resolve()


@pytest.mark.parametrize(
    "text, overrides, key, problem",
    [
        ("output_dir: o\ndata: {nframs: 3}\n", [], "data.nframs", "unknown key"),
        ("output_dir: o\n", ["data.nframes=abc"], "data.nframes", "integer"),
        ("output_dir: o\n", ["data.nframes=0"], "data.nframes", "greater than or equal to 1"),
        ("output_dir: o\n", ["data.dilation=-1"], "data.dilation", "greater than or equal to 0"),
        ("output_dir: o\n", ["data.root=/no/such/folder"], "data.root", "path does not exist: /no/such/folder"),
        ("seed: 1\n", [], "output_dir", "Field required"),
        ("output_dir: o\n", ["lr=0"], "lr", "greater than 0"),
    ],
)
def test_bad_config_is_one_line_naming_the_key(tmp_path, text, overrides, key, problem):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(_Job, path, overrides)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: {key}: ")
    assert problem in message


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(_Job, tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(_Job, _write(tmp_path, "output_dir: [unclosed\n"))
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(_Job, _write(tmp_path, "output_dir: o\n"), ["seed"])


def test_override_parses_yaml_scalars():
    data = apply_overrides({}, ["a.b=1", "a.c=0.5", "d=true", "e=[1, 2]", "f=null", "g=text"])
    assert data == {"a": {"b": 1, "c": 0.5}, "d": True, "e": [1, 2], "f": None, "g": "text"}


def test_config_hash_tracks_values(tmp_path):
    path = _write(tmp_path, "output_dir: o\n")
    first = load_config(_Job, path)
    assert config_hash(first) == config_hash(load_config(_Job, path))
    assert config_hash(first) != config_hash(load_config(_Job, path, ["seed=1"]))


def test_override_indexes_lists():
    data = apply_overrides({"rounds": [{"n": 1}, {"n": 2}]}, ["rounds.1.n=5", "rounds.0.extra.k=1"])
    assert data == {"rounds": [{"n": 1, "extra": {"k": 1}}, {"n": 5}]}
    with pytest.raises(ConfigError, match="not an index of a 2-item list"):
        apply_overrides({"rounds": [{}, {}]}, ["rounds.2.n=1"])
    with pytest.raises(ConfigError, match="'a' is not a mapping or list"):
        apply_overrides({"a": 3}, ["a.b=1"])
