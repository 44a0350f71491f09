"""`python -m lobsearch.cluster check`: shipped cluster files pass, broken ones name their key."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

from lobsearch import cluster
from lobsearch.cluster import Problem, check_file, main

CLUSTER_DIR = Path(__file__).resolve().parents[1] / "cluster"
SHIPPED = sorted(CLUSTER_DIR.glob("*.yaml"))


def shipped(name: str) -> dict:
    return yaml.safe_load((CLUSTER_DIR / name).read_text())


def write(tmp_path: Path, config: dict, name: str = "variant.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_cluster_dir_holds_the_gpu_and_cpu_files():
    assert {p.name for p in SHIPPED} >= {"gpu.yaml", "cpu.yaml"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_cluster_file_passes(path):
    assert check_file(path) == []


def test_cli_exit_code_is_zero_only_when_every_file_is_clean(tmp_path, capsys):
    assert main(["check", *map(str, SHIPPED)]) == 0
    assert capsys.readouterr().out.count(": ok") == len(SHIPPED)
    broken = shipped("gpu.yaml")
    broken["head_node_type"] = "haed"
    bad = write(tmp_path, broken)
    assert main(["check", str(CLUSTER_DIR / "cpu.yaml"), str(bad)]) == 1
    out = capsys.readouterr().out
    assert f"{bad}: head_node_type: unknown node type 'haed'; did you mean 'head'?" in out
    assert "cpu.yaml: ok" in out


def test_cli_help_names_the_rules(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["check", "--help"])
    assert stop.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "Exits 1 when any file has a problem" in text
    assert "LOBSEARCH_STORAGE" in text


def _rename(mapping: dict, old: str, new: str) -> None:
    mapping[new] = mapping.pop(old)


def _gpu_worker(config: dict) -> dict:
    return config["available_node_types"]["gpu_worker"]


BROKEN = {
    "misspelled key": (
        lambda c: _rename(_gpu_worker(c), "max_workers", "max_worker"),
        "available_node_types.gpu_worker.max_worker", "did you mean 'max_workers'?"),
    "misspelled top-level key": (
        lambda c: _rename(c, "idle_timeout_minutes", "idle_timeout_minute"),
        "idle_timeout_minute", "did you mean 'idle_timeout_minutes'?"),
    "wrong type": (
        lambda c: c.update(max_workers="four"),
        "max_workers", "must be of type integer (got 'four')"),
    "missing required key": (
        lambda c: _gpu_worker(c).pop("resources"),
        "available_node_types.gpu_worker.resources", "required key is missing"),
    "head names no node type": (
        lambda c: c.update(head_node_type="haed"),
        "head_node_type", "unknown node type 'haed'; did you mean 'head'?"),
    "no GPU node type in a GPU file": (
        lambda c: _gpu_worker(c)["node_config"].update(InstanceType="c5.xlarge"),
        "available_node_types", "no worker node type that can start (max_workers > 0) has a GPU"),
    "GPU node type declared without GPUs": (
        lambda c: _gpu_worker(c).update(resources={"CPU": 4, "GPU": 0}),
        "available_node_types", "meant for GPUs"),
    "Ray version mismatch in the image tag": (
        lambda c: c["docker"].update(worker_image="rayproject/ray:2.59.0-py311-gpu"),
        "docker.worker_image", f"Ray 2.59.0 in the image tag, but lobsearch runs Ray {ray.__version__}"),
    "Python mismatch in the image tag": (
        lambda c: c["docker"].update(head_image="rayproject/ray:2.60.0-py310"),
        "docker.head_image", "Python 3.10 in the image tag"),
    "untagged image": (
        lambda c: c["docker"].update(head_image="rayproject/ray"),
        "docker.head_image", "cannot read Ray and Python versions"),
    "no image": (
        lambda c: [c["docker"].pop(k) for k in ("head_image", "worker_image")],
        "docker.image", "required"),
    "min > max workers": (
        lambda c: _gpu_worker(c).update(min_workers=4, max_workers=2),
        "available_node_types.gpu_worker.max_workers", "must be >= min_workers (got 2 < 4)"),
    "sum of min_workers over max_workers": (
        lambda c: (_gpu_worker(c).update(min_workers=4), c.update(max_workers=3)),
        "max_workers", "must be >= the sum of min_workers over the node types (got 3 < 4)"),
    "head node type given workers": (
        lambda c: c["available_node_types"]["head"].update(max_workers=2),
        "available_node_types.head.max_workers", "must be 0 for the head node type (got 2)"),
    "no global max_workers": (
        lambda c: c.pop("max_workers"),
        "max_workers", "required"),
    "missing storage": (
        lambda c: c["head_setup_commands"].pop(),
        "head_setup_commands", "needs a storage path every node reaches"),
    "local storage path": (
        lambda c: c["head_setup_commands"].append("echo 'export LOBSEARCH_STORAGE=/tmp/r' >> ~/.bashrc"),
        "head_setup_commands[4]", "'/tmp/r' is not storage every node reaches"),
    "GPU node type on Ray's default AMI": (
        lambda c: _gpu_worker(c)["node_config"].pop("ImageId"),
        "available_node_types.gpu_worker.node_config.ImageId", "CUDA 11.2 driver"),
    "torch other than lobsearch's pin": (
        lambda c: c["worker_setup_commands"].__setitem__(0, "pip install torch==2.12.0+cu128"),
        "worker_setup_commands[0]",
        f"installs torch 2.12.0+cu128, but lobsearch pins torch=={cluster.lobsearch_torch_pin()}"),
    "literal W&B key": (
        lambda c: c["setup_commands"].append("echo 'export WANDB_API_KEY=0123abcd' >> ~/.bashrc"),
        "setup_commands[0]", "holds a literal WANDB_API_KEY"),
}


@pytest.mark.parametrize("case", BROKEN, ids=list(BROKEN))
def test_broken_variant_names_its_key(tmp_path, case):
    mutate, key, fragment = BROKEN[case]
    config = shipped("gpu.yaml")
    mutate(config)
    problems = check_file(write(tmp_path, config))
    assert [p for p in problems if p.key == key and fragment in p.message], problems


def test_secret_value_is_never_printed(tmp_path):
    config = shipped("cpu.yaml")
    config["metadata"] = {"env": {"WANDB_API_KEY": "0123abcd"}}
    problems = check_file(write(tmp_path, config))
    assert [p.key for p in problems] == ["metadata.env.WANDB_API_KEY"]
    assert "0123abcd" not in str(problems[0])


def test_every_problem_is_reported_in_one_pass(tmp_path):
    config = shipped("gpu.yaml")
    _rename(_gpu_worker(config), "max_workers", "max_worker")
    config["docker"]["worker_image"] = "rayproject/ray:2.59.0-py311-gpu"
    config["head_setup_commands"].pop()
    keys = {p.key for p in check_file(write(tmp_path, config))}
    assert keys >= {"available_node_types.gpu_worker.max_worker", "docker.worker_image",
                    "head_setup_commands"}


def test_a_single_node_cluster_needs_no_shared_storage(tmp_path):
    config = shipped("cpu.yaml")
    config["head_setup_commands"].pop()
    config["max_workers"] = 0
    config["available_node_types"]["cpu_worker"]["max_workers"] = 0
    assert check_file(write(tmp_path, config)) == []


def test_declared_gpu_resources_count_on_any_instance_type(tmp_path):
    config = shipped("gpu.yaml")
    _gpu_worker(config)["node_config"]["InstanceType"] = "x9.custom"
    _gpu_worker(config)["resources"] = {"CPU": 8, "GPU": 2}
    assert check_file(write(tmp_path, config)) == []


def test_only_ray_catches_a_docker_block_without_container_name(tmp_path):
    config = shipped("cpu.yaml")
    config["docker"].pop("container_name")
    problems = check_file(write(tmp_path, config))
    assert len(problems) == 1 and problems[0].message.startswith("Ray's own validation rejects")


@pytest.mark.parametrize("config", [
    {"cluster_name": 3, "provider": "aws", "max_workers": 2},
    {"cluster_name": "x", "provider": {"type": "aws"}, "max_workers": 2,
     "available_node_types": ["a"], "head_node_type": 5, "docker": "img"},
    {"cluster_name": "x", "provider": {"type": "aws"}, "max_workers": "2", "head_node_type": "h",
     "available_node_types": {"h": {"node_config": "m5", "resources": "GPU"},
                              "w": {"node_config": {"InstanceType": 5}, "max_workers": "3"}},
     "setup_commands": "pip", "head_setup_commands": [1, None]},
], ids=["scalars", "wrong containers", "wrong leaves"])
def test_malformed_values_are_problems_not_crashes(tmp_path, config):
    problems = check_file(write(tmp_path, config))
    assert problems and all(p.key for p in problems)


@pytest.mark.parametrize("text, fragment", [
    ("cluster_name: x\nprovider: {type: aws\n", "not valid YAML: line 3, column 1"),
    ("cluster_name: a\ncluster_name: b\n", "duplicate key 'cluster_name'"),
    ("- a\n- b\n", "must be a YAML mapping of Ray cluster keys (got list)"),
    ("", "got an empty file"),
], ids=["not YAML", "duplicate key", "not a mapping", "empty"])
def test_unreadable_file_is_one_problem(tmp_path, text, fragment):
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    [problem] = check_file(path)
    assert problem.key == "" and fragment in problem.message


def test_missing_file(tmp_path, capsys):
    missing = tmp_path / "nope.yaml"
    assert check_file(missing) == [Problem("", "no such file")]
    assert main(["check", str(missing)]) == 1
    assert f"{missing}: no such file" in capsys.readouterr().out


def test_ray_private_validation_api_is_where_lobsearch_expects_it():
    """Fails loudly when Ray moves the private API that ray_validate() wraps."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = shipped("gpu.yaml")
    validate_config(prepare_config(copy.deepcopy(config)))
    assert cluster.ray_validate(config) == []
    config["available_node_types"]["head"]["max_worker"] = 0
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(copy.deepcopy(config)))
    assert cluster.ray_validate(config) != []


def test_ray_schema_ships_with_ray_and_rejects_unknown_top_level_keys():
    schema = cluster.ray_schema()
    assert schema["additionalProperties"] is False
    assert {"available_node_types", "head_node_type", "docker", "metadata"} <= set(schema["properties"])


@pytest.mark.parametrize("image, expected", [
    ("rayproject/ray:2.60.0-py311-gpu", ("rayproject/ray", "2.60.0-py311-gpu")),
    ("rayproject/ray", ("rayproject/ray", "latest")),
    ("localhost:5000/ray", ("localhost:5000/ray", "latest")),
    ("localhost:5000/ray:2.60.0-py311", ("localhost:5000/ray", "2.60.0-py311")),
])
def test_image_reference_split(image, expected):
    assert cluster._split_image(image) == expected
