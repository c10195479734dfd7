"""The deployment files under docker/ agree with the code they deploy and with each other.

Dockerfiles, the compose stack and the Kubernetes manifests are read as data (PyYAML and a small
Dockerfile reader): the settings they set exist, the health endpoints and port are the worker's,
KEDA watches the queue's real Redis lists and its queries count the real job states, shutdown
grace periods nest, the baked weights are the revision toonq verifies.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest
import yaml
from sqlalchemy import Engine, text

from tests.integration.test_jobstore import claim, create
from toonq.shared.job import FINISHED_STATUSES, JobStatus
from toonq.shared.jobstore import JobStore
from toonq.shared.queue import queue_lists
from toonq.shared.settings import Settings
from toonq.worker.engine.weights import KNOWN_CHECKPOINTS
from toonq.worker.shared_tensors import DEFAULT_ROOT as SHARED_MEMORY_ROOT

if TYPE_CHECKING:
    from tests.conftest import ManualClock

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
K8S = DOCKER / "k8s"
WORKER_DOCKERFILE = DOCKER / "worker.Dockerfile"
PRODUCER_DOCKERFILE = DOCKER / "producer.Dockerfile"
DOCKERFILES = [WORKER_DOCKERFILE, PRODUCER_DOCKERFILE]
Doc = dict[str, Any]


# --- Reading the files ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


@dataclass(frozen=True)
class Stage:
    name: str | None
    instructions: list[Instruction]

    def all(self, keyword: str) -> list[str]:
        return [i.args for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"no {keyword} in stage {self.name}"
        return found[-1]

    def assignments(self, keyword: str) -> dict[str, str]:
        """ARG NAME=default and ENV NAME=value pairs of the stage."""
        pairs: dict[str, str] = {}
        for args in self.all(keyword):
            for word in shlex.split(args):
                name, _, value = word.partition("=")
                pairs[name] = value
        return pairs


@functools.cache
def read_dockerfile(path: Path) -> list[Stage]:
    """The build stages of a Dockerfile, continuation lines joined and comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    stages: list[Stage] = []
    for line in lines:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = args.split()
            name = words[-1] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(name, []))
        if stages:  # ARGs before the first FROM only parameterise FROM lines
            stages[-1].instructions.append(Instruction(keyword, args.strip()))
    return stages


def final_stage(path: Path) -> Stage:
    return read_dockerfile(path)[-1]


def named_stage(path: Path, name: str) -> Stage:
    (stage,) = [s for s in read_dockerfile(path) if s.name == name]
    return stage


def exec_form(args: str) -> list[str]:
    """The argv of an exec-form ENTRYPOINT/CMD; fails on the shell form."""
    try:
        argv = json.loads(args)
    except json.JSONDecodeError:
        pytest.fail(f"shell form {args!r}: signals would go to /bin/sh, not to toonq")
    assert isinstance(argv, list)
    assert argv
    assert all(isinstance(word, str) for word in argv)
    return argv


@functools.cache
def k8s_docs() -> list[Doc]:
    docs: list[Doc] = []
    for path in sorted(K8S.rglob("*.yaml")):
        docs.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None)
    return docs


def k8s_doc(kind: str) -> Doc:
    (doc,) = [doc for doc in k8s_docs() if doc["kind"] == kind]
    return doc


def pod_spec(kind: str) -> Doc:
    spec: Doc = k8s_doc(kind)["spec"]["template"]["spec"]
    return spec


def only_container(kind: str) -> Doc:
    containers: list[Doc] = pod_spec(kind)["containers"]
    (container,) = containers
    return container


def configmap() -> dict[str, str]:
    data: dict[str, str] = k8s_doc("ConfigMap")["data"]
    return data


def secrets() -> dict[str, dict[str, str]]:
    """The example Secrets' values by Secret name."""
    return {
        doc["metadata"]["name"]: doc["stringData"] for doc in k8s_docs() if doc["kind"] == "Secret"
    }


def pod_secret(kind: str) -> str:
    """The name of the Secret a pod takes its settings from."""
    names: list[str] = [
        source["secretRef"]["name"]
        for source in only_container(kind)["envFrom"]
        if "secretRef" in source
    ]
    (name,) = names
    return name


def worker_env() -> dict[str, str]:
    """What a worker pod's settings read: the ConfigMap and the workers' Secret."""
    return configmap() | secrets()[pod_secret("Deployment")]


def keda_triggers(trigger_type: str) -> list[Doc]:
    return [t for t in k8s_doc("ScaledObject")["spec"]["triggers"] if t["type"] == trigger_type]


@functools.cache
def compose_services() -> dict[str, Doc]:
    services: dict[str, Doc] = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]
    return services


_DEFAULTED = re.compile(r"\$\{(\w+):-([^}]*)\}")


def compose_env(service: Doc) -> dict[str, str]:
    """A service's environment as the container sees it when no override variable is set."""
    return {
        name: _DEFAULTED.sub(lambda m: m[2], str(value))
        for name, value in service.get("environment", {}).items()
    }


def compose_workers() -> dict[str, Doc]:
    return {
        name: service
        for name, service in compose_services().items()
        if service.get("command") == ["worker"]
    }


def seconds(duration: str) -> int:
    """A compose duration such as "1m30s"."""
    parts = re.findall(r"(\d+)([hms])", duration)
    assert "".join(n + u for n, u in parts) == duration, f"unsupported duration {duration!r}"
    return sum(int(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


def image_uid(path: Path) -> int:
    """The numeric user an image runs as; Kubernetes' runAsNonRoot can only verify a number."""
    user = final_stage(path).last("USER").split(":")[0]
    assert user.isdigit(), f"{path.name}: USER {user!r} is not numeric"
    return int(user)


def settings_variables() -> set[str]:
    """The TOONQ_* variables that `Settings.from_env` reads."""
    return set(Settings.variables())


def deployed_variables() -> set[str]:
    """Every TOONQ_* variable the Dockerfiles, compose and the manifests set or interpolate."""
    names = set(configmap())
    for kind in ("Deployment", "Job"):
        names |= {entry["name"] for entry in only_container(kind).get("env", [])}
    for service in compose_services().values():
        names |= set(service.get("environment", {}))
        names |= set(re.findall(r"\$\{(TOONQ_\w+)", json.dumps(service)))
    for path in DOCKERFILES:
        for stage in read_dockerfile(path):
            names |= set(stage.assignments("ENV"))
    return {name for name in names if name.startswith("TOONQ_")}


# --- Settings -------------------------------------------------------------------------------------


def test_every_toonq_variable_deployed_is_one_that_settings_reads() -> None:
    assert deployed_variables() - settings_variables() == set()


def test_the_example_configurations_are_valid_settings() -> None:
    for values in secrets().values():
        Settings.from_env(configmap() | values)
    for service in compose_services().values():
        env = compose_env(service)
        if any(name.startswith("TOONQ_") for name in env):
            Settings.from_env(env)


# --- Dockerfiles ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda path: path.name)
def test_images_run_as_a_non_root_user(path: Path) -> None:
    assert image_uid(path) != 0


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda path: path.name)
def test_images_start_toonq_in_exec_form(path: Path) -> None:
    stage = final_stage(path)
    argv = exec_form(stage.last("ENTRYPOINT")) + exec_form(stage.last("CMD"))
    assert "toonq" in argv


def test_the_worker_image_runs_the_worker_by_default() -> None:
    stage = final_stage(WORKER_DOCKERFILE)
    argv = exec_form(stage.last("ENTRYPOINT")) + exec_form(stage.last("CMD"))
    assert argv[-2:] == ["toonq", "worker"]


def test_the_producer_image_installs_no_torch() -> None:
    installs = [
        args
        for stage in read_dockerfile(PRODUCER_DOCKERFILE)
        for args in stage.all("RUN")
        if "pip install" in args
    ]
    assert installs
    for args in installs:
        assert "torch" not in args
        assert "[worker" not in args
    core = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower() for requirement in core}
    assert names.isdisjoint({"torch", "torchvision", "transformers"})


def test_the_worker_image_installs_the_makefiles_torch() -> None:
    makefile = re.search(r"^TORCH_SPEC \?= (.+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert makefile is not None
    build_args = named_stage(WORKER_DOCKERFILE, "build").assignments("ARG")
    assert build_args["TORCH_SPEC"] == makefile[1].strip()


def test_baked_weights_are_the_checkpoint_the_worker_loads_and_verifies() -> None:
    weights = named_stage(WORKER_DOCKERFILE, "weights")
    args = weights.assignments("ARG")
    checkpoint = KNOWN_CHECKPOINTS[args["MODEL_REPO"]]
    assert (args["MODEL_FILE"], args["MODEL_REVISION"]) == (
        checkpoint.filename,
        checkpoint.revision,
    )
    # Pods load what the image bakes...
    assert configmap()["TOONQ_MODEL"] == args["MODEL_REPO"]
    # ...from the Hugging Face cache the weights were downloaded into.
    final = final_stage(WORKER_DOCKERFILE)
    hf_home = weights.assignments("ENV")["HF_HOME"]
    assert final.assignments("ENV")["HF_HOME"] == hf_home
    assert any(
        "--from=weights" in copy and copy.split()[-2:] == [hf_home, hf_home]
        for copy in final.all("COPY")
    )


# --- Compose --------------------------------------------------------------------------------------


def test_compose_starts_toonq_services_after_a_successful_migration() -> None:
    services = compose_services()
    assert services["migrate"]["command"] == ["migrate"]
    toonq = [
        name
        for name, service in services.items()
        if service.get("image", "").startswith("toonq") and name != "migrate"
    ]
    assert {"worker", "worker-cpu"} <= set(toonq)
    for name in toonq:
        assert services[name]["depends_on"]["migrate"] == {
            "condition": "service_completed_successfully"
        }, name


def test_the_compose_gpu_worker_reserves_one_nvidia_gpu() -> None:
    worker = compose_services()["worker"]
    assert "profiles" not in worker
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]


def test_the_compose_cpu_worker_is_an_opt_in_profile_on_the_cpu() -> None:
    worker = compose_services()["worker-cpu"]
    assert worker["profiles"] == ["cpu"]
    assert "deploy" not in worker
    assert worker["environment"]["TOONQ_DEVICE"] == "cpu"
    # The user's own TOONQ_MODEL (e.g. random:tiny) wins over the default.
    assert worker["environment"]["TOONQ_MODEL"].startswith("${TOONQ_MODEL:-")


@pytest.mark.parametrize("name", sorted(compose_workers()))
def test_compose_workers_get_longer_to_stop_than_their_shutdown_grace(name: str) -> None:
    worker = compose_workers()[name]
    grace = Settings.from_env(compose_env(worker)).shutdown_grace_s
    assert seconds(worker["stop_grace_period"]) > grace


@pytest.mark.parametrize("name", sorted(compose_workers()))
def test_compose_workers_have_room_in_dev_shm_for_their_job_processes(name: str) -> None:
    # Docker's default of 64 MiB holds a handful of 1024² model inputs.
    assert compose_workers()[name]["shm_size"].endswith(("gb", "g"))


def test_compose_creates_the_output_bucket() -> None:
    services = compose_services()
    bucket = urlsplit(compose_env(services["worker"])["TOONQ_OUTPUT_PREFIX"]).netloc
    assert services["minio-init"]["command"][-1] == f"local/{bucket}"


class ReadyzServer(http.server.ThreadingHTTPServer):
    """Answers GET /readyz with `status`, as a worker does before (503) and once (200) it is
    ready."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ReadyzHandler)
        self.status = 503


class _ReadyzHandler(http.server.BaseHTTPRequestHandler):
    server: ReadyzServer

    def do_GET(self) -> None:
        self.send_response(self.server.status if self.path == "/readyz" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def readyz_server() -> Iterator[ReadyzServer]:
    server = ReadyzServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.mark.parametrize("name", sorted(compose_workers()))
def test_compose_healthchecks_pass_only_once_the_worker_is_ready(
    name: str, readyz_server: ReadyzServer
) -> None:
    worker = compose_workers()[name]
    port = compose_env(worker)["TOONQ_METRICS_PORT"]
    kind, *command = worker["healthcheck"]["test"]
    assert kind == "CMD"  # run directly: the image needs no shell or curl for it
    assert any(f"127.0.0.1:{port}/readyz" in word for word in command)
    # The image's python against a stand-in worker on a free port.
    argv = [word.replace(f":{port}/", f":{readyz_server.server_port}/") for word in command]
    assert_healthy_only_when_ready(argv, readyz_server)


def assert_healthy_only_when_ready(
    argv: list[str], server: ReadyzServer, env: dict[str, str] | None = None
) -> None:
    """Runs a health check command (the image's `python` being this one) against `server`
    answering 503, then 200."""
    argv = [sys.executable if word == "python" else word for word in argv]
    outcomes = {}
    for status in (503, 200):
        server.status = status
        outcomes[status] = subprocess.run(
            argv, capture_output=True, timeout=60, check=False, env=env
        )
    assert outcomes[503].returncode != 0
    assert outcomes[200].returncode == 0, outcomes[200].stderr


def test_the_worker_image_is_healthy_only_once_the_worker_is_ready(
    readyz_server: ReadyzServer,
) -> None:
    stage = final_stage(WORKER_DOCKERFILE)
    options, _, command = stage.last("HEALTHCHECK").partition("CMD ")
    # Time for a first start that downloads the weights, as the compose workers get.
    (start_period,) = re.findall(r"--start-period=(\S+)", options)
    assert seconds(start_period) >= seconds(
        compose_services()["worker"]["healthcheck"]["start_period"]
    )
    # The port of the image's own TOONQ_METRICS_PORT, here the stand-in worker's.
    assert int(stage.assignments("ENV")["TOONQ_METRICS_PORT"]) > 0
    env = os.environ | {"TOONQ_METRICS_PORT": str(readyz_server.server_port)}
    assert_healthy_only_when_ready(exec_form(command), readyz_server, env)


def test_the_cli_image_declares_it_has_no_health_to_check() -> None:
    # Its containers run one command and exit.
    assert final_stage(PRODUCER_DOCKERFILE).last("HEALTHCHECK") == "NONE"


# --- Kubernetes -----------------------------------------------------------------------------------


def test_every_manifest_has_an_api_version_a_kind_and_a_name() -> None:
    docs = k8s_docs()
    assert {doc["kind"] for doc in docs} >= {
        "ConfigMap",
        "Secret",
        "Job",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "ScaledObject",
        "TriggerAuthentication",
    }
    for doc in docs:
        assert doc.get("apiVersion"), doc
        assert doc.get("kind"), doc
        assert doc.get("metadata", {}).get("name"), doc


def test_every_manifest_is_in_the_namespace_the_service_addresses_name() -> None:
    # KEDA's Redis address and the example URLs are <service>.toonq.svc.cluster.local.
    for doc in k8s_docs():
        assert doc["metadata"].get("namespace") == "toonq", doc["metadata"]["name"]


@pytest.mark.parametrize(
    ("kind", "secret"), [("Deployment", "toonq-worker"), ("Job", "toonq-producer")]
)
def test_pods_take_their_settings_from_the_configmap_and_their_sides_secret(
    kind: str, secret: str
) -> None:
    sources = {
        (source_kind, ref["name"])
        for source in only_container(kind)["envFrom"]
        for source_kind, ref in source.items()
    }
    assert sources == {
        ("configMapRef", k8s_doc("ConfigMap")["metadata"]["name"]),
        ("secretRef", secret),
    }


def test_producers_and_workers_have_credentials_of_their_own() -> None:
    producer, worker = secrets()["toonq-producer"], secrets()["toonq-worker"]
    for variable in ("TOONQ_DATABASE_URL", "TOONQ_BROKER_URL"):
        assert urlsplit(producer[variable]).username != urlsplit(worker[variable]).username
        assert urlsplit(producer[variable]).hostname == urlsplit(worker[variable]).hostname
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= producer.keys() & worker.keys()


@pytest.mark.parametrize("kind", ["Deployment", "Job"])
def test_pods_mount_no_service_account_token(kind: str) -> None:
    assert pod_spec(kind)["automountServiceAccountToken"] is False


@pytest.mark.parametrize("kind", ["Deployment", "Job"])
def test_containers_run_on_a_read_only_root_filesystem(kind: str) -> None:
    security = only_container(kind)["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]


def test_the_worker_writes_only_to_its_own_empty_dirs() -> None:
    mounts = {m["name"]: m["mountPath"] for m in only_container("Deployment")["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec("Deployment")["volumes"]}
    home = final_stage(WORKER_DOCKERFILE).last("WORKDIR")
    assert sorted(mounts.values()) == sorted(["/tmp", home, str(SHARED_MEMORY_ROOT)])
    for name in mounts:
        assert "emptyDir" in volumes[name], name
    # What job processes share with the model process lives in memory, within the pod's limit.
    shm = next(name for name, path in mounts.items() if path == str(SHARED_MEMORY_ROOT))
    assert volumes[shm]["emptyDir"]["medium"] == "Memory"
    assert "sizeLimit" in volumes[shm]["emptyDir"]
    # A volume over HF_HOME would hide the weights the image bakes there.
    assert final_stage(WORKER_DOCKERFILE).assignments("ENV")["HF_HOME"] not in mounts.values()


def network_policies(labels: dict[str, str]) -> list[Doc]:
    """The NetworkPolicies that select pods with `labels`."""
    return [
        doc
        for doc in k8s_docs()
        if doc["kind"] == "NetworkPolicy"
        and doc["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    ]


@pytest.mark.parametrize(("kind", "ports"), [("Deployment", ["metrics"]), ("Job", [])])
def test_network_policies_let_in_nothing_but_the_metrics_port(kind: str, ports: list[str]) -> None:
    policies = network_policies(k8s_doc(kind)["spec"]["template"]["metadata"]["labels"])
    assert policies
    assert all("Ingress" in policy["spec"]["policyTypes"] for policy in policies)
    allowed = [
        port["port"]
        for policy in policies
        for rule in policy["spec"].get("ingress", [])
        for port in rule["ports"]
    ]
    assert allowed == ports
    container_ports = {port["name"] for port in only_container(kind).get("ports", [])}
    assert set(allowed) <= container_ports


@pytest.mark.parametrize(
    ("kind", "dockerfile"), [("Deployment", WORKER_DOCKERFILE), ("Job", PRODUCER_DOCKERFILE)]
)
def test_pods_run_as_their_images_non_root_user(kind: str, dockerfile: Path) -> None:
    security = pod_spec(kind)["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == image_uid(dockerfile)


def test_the_migration_job_runs_toonq_migrate() -> None:
    assert only_container("Job")["args"] == ["migrate"]
    assert pod_spec("Job")["restartPolicy"] in ("Never", "OnFailure")


def test_probes_use_the_health_endpoints_on_the_metrics_port() -> None:
    container = only_container("Deployment")
    (port,) = [port for port in container["ports"] if port["name"] == "metrics"]
    assert port["containerPort"] == Settings.from_env(configmap()).metrics_port
    probes = {
        probe: (container[probe]["httpGet"]["path"], container[probe]["httpGet"]["port"])
        for probe in ("startupProbe", "readinessProbe", "livenessProbe")
    }
    assert probes == {
        "startupProbe": ("/readyz", "metrics"),
        "readinessProbe": ("/readyz", "metrics"),
        "livenessProbe": ("/livez", "metrics"),
    }


def test_prometheus_finds_the_metrics_port() -> None:
    port = Settings.from_env(configmap()).metrics_port
    annotations = k8s_doc("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port)
    assert annotations["prometheus.io/path"] == "/metrics"
    (service_port,) = k8s_doc("Service")["spec"]["ports"]
    assert (service_port["port"], service_port["targetPort"]) == (port, "metrics")


def test_worker_pods_outlive_their_shutdown_grace() -> None:
    grace = Settings.from_env(worker_env()).shutdown_grace_s
    assert pod_spec("Deployment")["terminationGracePeriodSeconds"] > grace


def test_worker_pods_hold_one_gpu_each() -> None:
    assert only_container("Deployment")["resources"]["limits"]["nvidia.com/gpu"] == 1


@pytest.mark.parametrize("kind", ["Service", "PodDisruptionBudget"])
def test_service_and_disruption_budget_select_the_worker_pods(kind: str) -> None:
    pod_labels = k8s_doc("Deployment")["spec"]["template"]["metadata"]["labels"]
    selector = k8s_doc(kind)["spec"]["selector"]
    selector = selector.get("matchLabels", selector)
    assert selector
    assert selector.items() <= pod_labels.items()


def test_keda_scales_the_worker_deployment() -> None:
    deployment = k8s_doc("Deployment")
    target = k8s_doc("ScaledObject")["spec"]["scaleTargetRef"]
    assert target["name"] == deployment["metadata"]["name"]
    assert target.get("kind", "Deployment") == "Deployment"
    # A replica count in the Deployment would reset the autoscaler's on every apply.
    assert "replicas" not in deployment["spec"]


def test_keda_watches_every_redis_list_of_the_queue_on_the_broker() -> None:
    settings = Settings.from_env(worker_env())
    triggers = keda_triggers("redis")
    assert sorted(t["metadata"]["listName"] for t in triggers) == sorted(
        queue_lists(settings.queue)
    )
    broker = urlsplit(settings.broker_url)
    for trigger in triggers:
        assert trigger["metadata"]["address"] == f"{broker.hostname}:{broker.port}"
        assert trigger["metadata"]["databaseIndex"] == broker.path.lstrip("/")


def test_keda_authenticates_with_the_workers_credentials() -> None:
    refs = [
        ref
        for doc in k8s_docs()
        if doc["kind"] == "TriggerAuthentication"
        for ref in doc["spec"]["secretTargetRef"]
    ]
    assert {ref["name"] for ref in refs} == {pod_secret("Deployment")}
    env = worker_env()
    values = {ref["parameter"]: env[ref["key"]] for ref in refs}
    broker = urlsplit(env["TOONQ_BROKER_URL"])
    assert (values["username"], values["password"]) == (broker.username, broker.password)
    # KEDA's driver (pgx) takes the plain URL form, not SQLAlchemy's postgresql+psycopg://.
    assert values["connection"] == env["TOONQ_DATABASE_URL"]
    assert urlsplit(values["connection"]).scheme == "postgresql"
    auth_names = {
        doc["metadata"]["name"] for doc in k8s_docs() if doc["kind"] == "TriggerAuthentication"
    }
    for trigger in k8s_doc("ScaledObject")["spec"]["triggers"]:
        assert trigger["authenticationRef"]["name"] in auth_names


def test_keda_trigger_metadata_values_are_strings() -> None:
    # The ScaledObject CRD types trigger metadata as a map of strings.
    for trigger in k8s_doc("ScaledObject")["spec"]["triggers"]:
        assert all(isinstance(value, str) for value in trigger["metadata"].values()), trigger


def test_keda_scales_down_one_pod_at_a_time_after_a_stabilization_window() -> None:
    spec = k8s_doc("ScaledObject")["spec"]
    scale_down = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
    assert scale_down["stabilizationWindowSeconds"] >= 300
    assert scale_down["policies"]
    for policy in scale_down["policies"]:
        assert (policy["type"], policy["value"]) == ("Pods", 1)


def test_keda_open_jobs_are_the_unfinished_statuses() -> None:
    (open_jobs,) = [t for t in keda_triggers("postgresql") if t["name"] == "open-jobs"]
    statuses = set(re.findall(r"'(\w+)'", open_jobs["metadata"]["query"]))
    assert statuses == {status.value for status in JobStatus if status not in FINISHED_STATUSES}


def test_keda_queries_count_busy_workers_and_open_jobs(
    pg_jobstore: JobStore, pg_engine: Engine, clock: ManualClock
) -> None:
    jobs = [create(pg_jobstore) for _ in range(6)]
    claim(pg_jobstore, jobs[0], "toonq-worker-a")
    claim(pg_jobstore, jobs[1], "toonq-worker-a")
    claim(pg_jobstore, jobs[2], "toonq-worker-b")
    # A worker lost an hour ago: its job still reads running, under a lapsed lease.
    clock.advance(-3600)
    claim(pg_jobstore, jobs[3], "toonq-worker-lost")
    clock.advance(3600)
    pg_jobstore.cancel(jobs[4].id, actor="test")
    # jobs[5] waits in the queue.

    with pg_engine.connect() as connection:
        counts = {
            trigger["name"]: connection.execute(text(trigger["metadata"]["query"])).scalar_one()
            for trigger in keda_triggers("postgresql")
        }

    assert counts == {"busy-workers": 2, "open-jobs": 5}
