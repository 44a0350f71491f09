"""Offline checks of Ray cluster launcher files (the YAML that ``ray up`` reads).

``python -m lobsearch.cluster check FILE [FILE...]`` prints every problem of every file, each
with its key path (``cluster/gpu.yaml: available_node_types.gpu_worker.max_workers: ...``), and
exits 1 when any file has one. ``ray up`` has no dry run; this check starts no Ray and reaches
no cloud, so it cannot see provider-side values such as whether an instance type exists.

A file is checked against:

- the JSON schema shipped inside the installed ``ray`` package (every error, not only the
  first), then Ray's own ``prepare_config``/``validate_config`` once lobsearch's structural
  rules pass (so that one mistake is not reported twice);
- lobsearch's rules: ``head_node_type`` names a node type; ``max_workers`` is set, each node
  type's ``min_workers <= max_workers``, the sum of ``min_workers`` fits ``max_workers`` and
  the head node type starts no workers; every docker image tag names the installed Ray version
  and the running Python (``rayproject/ray:2.60.0-py311-gpu``); a file with a GPU image (tag
  ending in ``-gpu`` or ``-cuNNN``) is meant for GPUs and needs a worker node type that can
  start and has GPUs (``resources: {GPU: n}``, or an AWS GPU instance type when ``resources``
  leaves GPU out); an AWS GPU node type sets ``ImageId`` (Ray's default AMI has a CUDA 11.2
  driver); a cluster that can start workers exports ``LOBSEARCH_STORAGE`` as a URI every node
  reaches (``s3://...``) in ``setup_commands``, ``head_setup_commands`` or
  ``head_start_ray_commands``; a ``torch==`` in a command equals lobsearch's torch pin; no
  literal ``WANDB_API_KEY`` is written in the file.
"""

from __future__ import annotations

import argparse
import copy
import functools
import importlib.metadata
import json
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from lobsearch.errors import unknown_choice

STORAGE_VAR = "LOBSEARCH_STORAGE"
SHARED_SCHEMES = ("abfs", "abfss", "gcs", "gs", "hdfs", "s3")
STORAGE_COMMANDS = ("setup_commands", "head_setup_commands", "head_start_ray_commands")
SETUP_COMMANDS = ("setup_commands", "head_setup_commands", "worker_setup_commands")

_IMAGE_TAG = re.compile(
    r"^(?P<ray>\d+\.\d+\.\d+)(?:\.[0-9a-f]+)?-py(?P<major>\d)(?P<minor>\d+)(?P<variant>-[\w.]+)?$"
)
_GPU_VARIANT = re.compile(r"^-(gpu|cu\d+)$")
_AWS_GPU_INSTANCE = re.compile(r"^(p\d+|g\d+|gr\d+)[a-z]*\.")
_STORAGE = re.compile(rf"\b{STORAGE_VAR}=['\"]?([^\s'\";|&)]*)")
_TORCH_PIN = re.compile(r"(?<![\w-])torch==([^\s'\";,]+)")
_SECRET = re.compile(r"WANDB_API_KEY\s*=\s*['\"]?[^\s'\"$]")


@dataclass(frozen=True)
class Problem:
    """One broken rule: ``key`` is the dotted key path (``""`` for the whole file)."""

    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}" if self.key else self.message


def check_file(path: str | Path) -> list[Problem]:
    """Every problem of one cluster file, in one pass; an empty list when it is clean."""
    config, problems = load_cluster_yaml(Path(path))
    if config is None:
        return problems
    structural = schema_problems(config) + head_problems(config) + worker_count_problems(config)
    problems += structural
    if not structural:
        problems += ray_validate(config)
    for rule in (image_problems, gpu_problems, ami_problems, storage_problems, torch_problems,
                 secret_problems):
        problems += rule(config)
    return list(dict.fromkeys(problems))


# ----------------------------------------------------------------------------- reading


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key given twice in one mapping (plain YAML keeps the last)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    keys = [loader.construct_object(key_node, deep=deep) for key_node, _ in node.value]
    for index, key in enumerate(keys):
        if isinstance(key, str) and key in keys[:index]:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (YAML keeps only the last)",
                node.value[index][0].start_mark)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_cluster_yaml(path: Path) -> tuple[dict | None, list[Problem]]:
    """The file's top-level mapping, or None and the problem that stopped reading it."""
    try:
        text = path.read_text(encoding="utf-8")
        config = yaml.load(text, Loader=_StrictLoader)
    except FileNotFoundError:
        return None, [Problem("", "no such file")]
    except (OSError, UnicodeDecodeError) as error:
        return None, [Problem("", f"cannot read the file: {error}")]
    except yaml.YAMLError as error:
        return None, [Problem("", f"not valid YAML: {_yaml_reason(error)}")]
    if not isinstance(config, dict):
        got = "an empty file" if config is None else type(config).__name__
        return None, [Problem("", f"must be a YAML mapping of Ray cluster keys (got {got})")]
    return config, []


def _yaml_reason(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error)
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark else problem


# ----------------------------------------------------------------------------- Ray's checks


@functools.cache
def ray_schema() -> dict:
    """The cluster-config JSON schema that ships inside the installed ``ray`` package."""
    return json.loads(resources.files("ray.autoscaler").joinpath("ray-schema.json").read_text())


def schema_problems(config: dict) -> list[Problem]:
    """Every error of ``config`` against Ray's schema, each at the key it concerns."""
    import jsonschema

    validator_class = jsonschema.validators.validator_for(ray_schema())
    problems = []
    for error in validator_class(ray_schema()).iter_errors(config):
        problems += _schema_error_problems(error)
    return problems


def _schema_error_problems(error) -> list[Problem]:
    path = list(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = error.schema.get("properties", {})
        return [Problem(key_path(path + [k]), unknown_choice("key", k, allowed))
                for k in error.instance if k not in allowed]
    if error.validator == "required" and isinstance(error.instance, dict):
        return [Problem(key_path(path + [k]), "required key is missing")
                for k in error.validator_value if k not in error.instance]
    if error.validator == "type":
        wanted = error.validator_value
        wanted = " or ".join(wanted) if isinstance(wanted, list) else wanted
        return [Problem(key_path(path), f"must be of type {wanted} (got {error.instance!r})")]
    if error.validator == "minimum":
        return [Problem(key_path(path), f"must be >= {error.validator_value} (got {error.instance!r})")]
    return [Problem(key_path(path), error.message)]


def ray_validate(config: dict) -> list[Problem]:
    """Ray's own check, as ``ray up`` runs it: ``prepare_config`` then ``validate_config``.

    Both live in ``ray.autoscaler._private.util``, a private API: this is the one place that
    calls it, and tests/test_cluster_check.py fails when it moves (an ImportError here is not
    caught on purpose). Returns Ray's first complaint, without a key (Ray gives none).
    """
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    try:
        validate_config(prepare_config(copy.deepcopy(config)))
    except (AssertionError, KeyError, NotImplementedError, RuntimeError, ValueError,
            jsonschema.ValidationError) as error:
        return [Problem("", f"Ray's own validation rejects the file: {error}")]
    return []


# ----------------------------------------------------------------------------- lobsearch's rules


def head_problems(config: dict) -> list[Problem]:
    """``head_node_type`` is set and names one of ``available_node_types``."""
    types = node_types(config)
    head = config.get("head_node_type")
    if "available_node_types" not in config:
        return [Problem("available_node_types", "required: lobsearch needs a head node type "
                        "and worker node types")]
    if head is None:
        return [Problem("head_node_type", "required: the node type the head runs on")]
    if isinstance(head, str) and head not in types:
        return [Problem("head_node_type", unknown_choice("node type", head, types))]
    return []


def worker_count_problems(config: dict) -> list[Problem]:
    """``max_workers`` set; per type min <= max; sum of mins <= max_workers; head starts none."""
    global_max = config.get("max_workers")
    if global_max is None:
        return [Problem("max_workers", "required: without it Ray applies its provider's "
                        "default silently")]
    problems, total_min = [], 0
    for name, spec in node_types(config).items():
        low, high = _int(spec.get("min_workers"), 0), max_workers_of(config, name)
        key = f"available_node_types.{name}"
        if name == config.get("head_node_type"):
            problems += [Problem(f"{key}.{field}", f"must be 0 for the head node type (got {n}); "
                                 "give workers a node type of their own")
                         for field, n in (("min_workers", low), ("max_workers", high)) if n]
        elif high is not None and low > high:
            problems.append(Problem(f"{key}.max_workers",
                                    f"must be >= min_workers (got {high} < {low})"))
        total_min += low
    if isinstance(global_max, int) and total_min > global_max:
        problems.append(Problem("max_workers", "must be >= the sum of min_workers over the node "
                                f"types (got {global_max} < {total_min})"))
    return problems


def image_problems(config: dict) -> list[Problem]:
    """A docker image is set, and each image tag names the installed Ray and running Python."""
    images = docker_images(config)
    if not isinstance(config.get("docker", {}), dict):
        return []
    if not images:
        return [Problem("docker.image", "required: lobsearch pins Ray and Python through the "
                        f"image, e.g. {_suggest_image('rayproject/ray', '')}")]
    problems = []
    for key, image in images:
        problems += _image_tag_problems(key, image)
    return problems


def _image_tag_problems(key: str, image: str) -> list[Problem]:
    import ray

    repo, tag = _split_image(image)
    found = _IMAGE_TAG.match(tag)
    if not found:
        return [Problem(key, f"cannot read Ray and Python versions from the tag of {image!r}; "
                        f"lobsearch needs a tag like {_suggest_image(repo, '-gpu')}")]
    suggestion = _suggest_image(repo, found["variant"] or "")
    python = f"{found['major']}.{found['minor']}"
    problems = []
    if found["ray"] != ray.__version__:
        problems.append(Problem(key, f"Ray {found['ray']} in the image tag, but lobsearch runs "
                                f"Ray {ray.__version__} (installed here); use {suggestion}"))
    if python != _running_python():
        problems.append(Problem(key, f"Python {python} in the image tag, but lobsearch runs "
                                f"Python {_running_python()} here; use {suggestion}"))
    return problems


def gpu_problems(config: dict) -> list[Problem]:
    """A file with a GPU image has a worker node type that can start and has GPUs."""
    gpu_images = [(key, image) for key, image in docker_images(config) if _is_gpu_image(image)]
    if not gpu_images or gpu_node_types(config):
        return []
    key, image = gpu_images[0]
    return [Problem("available_node_types", f"{key} is a GPU image ({image}), so the file is "
                    "meant for GPUs, but no worker node type that can start (max_workers > 0) "
                    "has a GPU: set `resources: {GPU: n}` or a GPU instance type (g5, g6, p4d, "
                    "p5, ...)")]


def ami_problems(config: dict) -> list[Problem]:
    """On AWS, each GPU node type names its AMI: Ray's default AMI has a CUDA 11.2 driver."""
    if _provider_type(config) != "aws":
        return []
    problems = []
    for name in gpu_node_types(config, startable_only=False):
        image_id = _node_config(node_types(config)[name]).get("ImageId", "")
        if str(image_id).lower() in ("", "latest_dlami"):
            problems.append(Problem(f"available_node_types.{name}.node_config.ImageId",
                                    "required for a GPU node type: Ray's default AMI has a CUDA "
                                    "11.2 driver, too old for torch's CUDA 12 builds and H100s; "
                                    "see cluster/gpu.yaml"))
    return problems


def storage_problems(config: dict) -> list[Problem]:
    """A cluster that can start workers exports ``LOBSEARCH_STORAGE`` as a shared URI."""
    global_max = config.get("max_workers")
    if not isinstance(global_max, int) or global_max == 0:
        return []
    found = [(key, match[1]) for key, command in commands(config, STORAGE_COMMANDS)
             for match in _STORAGE.finditer(command)]
    if not found:
        return [Problem("head_setup_commands", f"a cluster that can start workers (max_workers "
                        f"{global_max}) needs a storage path every node reaches: add a command "
                        f"that exports {STORAGE_VAR}=s3://BUCKET/PREFIX (see cluster/gpu.yaml)")]
    return [Problem(key, f"{STORAGE_VAR} {value!r} is not storage every node reaches: use a URI "
                    f"({', '.join(s + '://' for s in SHARED_SCHEMES)}); a local path exists on "
                    "one node only")
            for key, value in found if value.partition("://")[0] not in SHARED_SCHEMES
            or not value.partition("://")[2]]


def torch_problems(config: dict) -> list[Problem]:
    """A ``torch==X`` installed by a command matches lobsearch's torch pin."""
    pinned = lobsearch_torch_pin()
    if pinned is None:
        return []
    keys = SETUP_COMMANDS + tuple(f"available_node_types.{name}.worker_setup_commands"
                                  for name in node_types(config))
    return [Problem(key, f"installs torch {match[1]}, but lobsearch pins torch=={pinned}; "
                    "pip would replace it when installing lobsearch")
            for key, command in commands(config, keys)
            for match in _TORCH_PIN.finditer(command) if match[1].split("+")[0] != pinned]


def secret_problems(config: dict) -> list[Problem]:
    """No literal W&B key anywhere in the file (the value is never printed)."""
    return [Problem(key, "holds a literal WANDB_API_KEY: keep keys out of cluster files and "
                    "pass the key when submitting (ray job submit --runtime-env-json, see "
                    "cluster/gpu.yaml)")
            for key, text in strings(config) if _SECRET.search(text)]


# ----------------------------------------------------------------------------- reading a config


def key_path(parts: Sequence[str | int]) -> str:
    """``["a", "b", 2, "c"]`` -> ``"a.b[2].c"``."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def node_types(config: dict) -> dict[str, dict]:
    """``available_node_types`` with the entries that are mappings (others are schema errors)."""
    types = config.get("available_node_types")
    if not isinstance(types, dict):
        return {}
    return {str(name): spec for name, spec in types.items() if isinstance(spec, dict)}


def max_workers_of(config: dict, name: str) -> int | None:
    """A node type's max_workers as Ray fills it in: the global one, or 0 for the head type."""
    default = 0 if name == config.get("head_node_type") else config.get("max_workers")
    return _int(node_types(config)[name].get("max_workers"), _int(default, None))


def gpu_node_types(config: dict, *, startable_only: bool = True) -> list[str]:
    """Worker node types with GPUs: ``resources.GPU > 0``, or an AWS GPU instance type when
    ``resources`` leaves GPU out (Ray reads the count from the instance type)."""
    found = []
    for name, spec in node_types(config).items():
        if name == config.get("head_node_type"):
            continue
        if startable_only and not (max_workers_of(config, name) or 0) > 0:
            continue
        if _has_gpu(spec, _provider_type(config)):
            found.append(name)
    return found


def docker_images(config: dict) -> list[tuple[str, str]]:
    """(key path, image) for every image in the file: global ones, then per node type."""
    docker = config.get("docker") if isinstance(config.get("docker"), dict) else {}
    images = [(f"docker.{field}", docker[field]) for field in ("image", "head_image", "worker_image")
              if isinstance(docker.get(field), str) and docker[field]]
    for name, spec in node_types(config).items():
        own = spec.get("docker")
        if isinstance(own, dict) and isinstance(own.get("worker_image"), str):
            images.append((f"available_node_types.{name}.docker.worker_image", own["worker_image"]))
    return images


def commands(config: dict, keys: Sequence[str]) -> Iterator[tuple[str, str]]:
    """(key path, command) for each string command under the given (dotted) command-list keys."""
    for key in keys:
        node = config
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        for index, command in enumerate(node if isinstance(node, list) else []):
            if isinstance(command, str):
                yield f"{key}[{index}]", command


def strings(node: object, path: tuple = ()) -> Iterator[tuple[str, str]]:
    """(key path, text) for every string in the config; a ``WANDB_API_KEY: value`` entry is
    yielded as ``WANDB_API_KEY=value`` so that the secret rule sees it."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "WANDB_API_KEY" and isinstance(value, str):
                yield key_path(path + (key,)), f"WANDB_API_KEY={value}"
            else:
                yield from strings(value, path + (str(key),))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from strings(value, path + (index,))
    elif isinstance(node, str):
        yield key_path(path), node


@functools.cache
def lobsearch_torch_pin() -> str | None:
    """The version in lobsearch's ``torch==X`` requirement, or None when there is none."""
    from packaging.requirements import Requirement

    try:
        requirements = importlib.metadata.requires("lobsearch") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for text in requirements:
        requirement = Requirement(text)
        exact = [s.version for s in requirement.specifier if s.operator == "=="]
        if requirement.name == "torch" and exact:
            return exact[0]
    return None


def _has_gpu(spec: dict, provider: str | None) -> bool:
    declared = spec.get("resources")
    if isinstance(declared, dict) and "GPU" in declared:
        return _int(declared["GPU"], 0) > 0
    instance = _node_config(spec).get("InstanceType")
    return provider == "aws" and isinstance(instance, str) and bool(_AWS_GPU_INSTANCE.match(instance))


def _node_config(spec: dict) -> dict:
    return spec["node_config"] if isinstance(spec.get("node_config"), dict) else {}


def _is_gpu_image(image: str) -> bool:
    found = _IMAGE_TAG.match(_split_image(image)[1])
    return bool(found and found["variant"] and _GPU_VARIANT.match(found["variant"]))


def _split_image(image: str) -> tuple[str, str]:
    """``registry/repo:tag`` -> (``registry/repo``, ``tag``); no tag means ``latest``."""
    repo, _, tag = image.rpartition(":")
    if not repo or "/" in tag:
        return image, "latest"
    return repo, tag


def _suggest_image(repo: str, variant: str) -> str:
    import ray

    major, minor = sys.version_info[:2]
    return f"{repo}:{ray.__version__}-py{major}{minor}{variant}"


def _running_python() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def _provider_type(config: dict) -> str | None:
    provider = config.get("provider")
    return provider.get("type") if isinstance(provider, dict) else None


def _int(value: object, default: int | None) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


# ----------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lobsearch.cluster check FILE...``: 0 when every file is clean, else 1."""
    parser = argparse.ArgumentParser(
        prog="python -m lobsearch.cluster",
        description="Tools for the Ray cluster launcher files in cluster/ (the YAML for `ray up`).")
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    check = subcommands.add_parser(
        "check", help="check cluster files offline; exit 1 when any has a problem",
        description="Check each FILE against the schema inside the installed ray package, Ray's "
        "own config validation and lobsearch's rules (head node type, worker counts, docker "
        "image Ray/Python versions, a GPU node type in a GPU-image file, the AMI of AWS GPU "
        f"nodes, {STORAGE_VAR} as a shared URI, the torch pin, no literal W&B key). Prints "
        "every problem as FILE: KEY: MESSAGE, or FILE: ok. Starts no Ray and reaches no cloud: "
        "provider-side values such as instance types are not checked. Exits 1 when any file "
        "has a problem.")
    check.add_argument("files", nargs="+", type=Path, metavar="FILE", help="a cluster YAML file")
    args = parser.parse_args(argv)
    return _check_files(args.files)


def _check_files(files: Sequence[Path]) -> int:
    failed = 0
    for path in files:
        problems = check_file(path)
        for problem in problems:
            print(f"{path}: {problem}")
        if not problems:
            print(f"{path}: ok")
        failed += bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
