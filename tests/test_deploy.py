"""The deployment recipe in deploy/: manifests that agree with each other and with the server."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support import StartServer, make_config

from yunpian_sms_server.app import LIVENESS_SERVICE, SHUTDOWN_ANSWER_MARGIN_S
from yunpian_sms_server.auth import hash_token
from yunpian_sms_server.config import Config, parse_config
from yunpian_sms_server.listen_addresses import parse_listen

REPO = Path(__file__).resolve().parent.parent
KUBERNETES = REPO / "deploy" / "kubernetes"
API_KEY = "0123456789abcdef0123456789abcdef"
FINGERPRINT_SECRET = "f" * 64
# The environment the Deployment gives the server from the Secret (secret.example.yaml).
SECRET_ENV = {"YUNPIAN_API_KEY": API_KEY, "YUNPIAN_SMS_FINGERPRINT_SECRET": FINGERPRINT_SECRET}


def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    """Every object kustomization.yaml applies, by (kind, name)."""
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    objects = {}
    for resource in kustomization["resources"]:
        for document in yaml.safe_load_all((KUBERNETES / resource).read_text()):
            objects[(document["kind"], document["metadata"]["name"])] = document
    return objects


@pytest.fixture(scope="module")
def objects() -> dict[tuple[str, str], dict[str, Any]]:
    return manifests()


@pytest.fixture(scope="module")
def config(objects: dict[tuple[str, str], dict[str, Any]]) -> Config:
    import tomllib

    toml = objects[("ConfigMap", "yunpian-sms")]["data"]["config.toml"]
    return parse_config(tomllib.loads(toml), SECRET_ENV)


def server_container(objects: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    [container] = objects[("Deployment", "yunpian-sms")]["spec"]["template"]["spec"]["containers"]
    return container


def ports(container: dict[str, Any]) -> dict[str, int]:
    return {port["name"]: port["containerPort"] for port in container["ports"]}


def test_the_config_in_the_configmap_is_valid_and_authenticates_callers(config: Config) -> None:
    assert config.authenticates
    assert config.store.url.startswith("redis://")
    assert config.template_checks.verify_on_start
    names = {caller.name for caller in (config.auth.callers if config.auth else ())}
    assert names == {"signin-service", "ops"}


def test_the_example_token_hashes_are_what_the_comment_says(config: Config) -> None:
    assert config.auth is not None
    hashes = {caller.name: caller.token_sha256 for caller in config.auth.callers}
    assert hashes == {
        "signin-service": hash_token("change-me-signin"),
        "ops": hash_token("change-me-ops"),
    }


def test_the_server_listens_where_the_container_and_the_service_expect(
    objects: dict[tuple[str, str], dict[str, Any]], config: Config
) -> None:
    container = server_container(objects)
    assert parse_listen(config.server.listen)[1] == ports(container)["grpc"]
    assert parse_listen(config.server.metrics_listen)[1] == ports(container)["metrics"]
    service = objects[("Service", "yunpian-sms")]
    assert {port["targetPort"] for port in service["spec"]["ports"]} == set(ports(container))


def test_probes_use_the_grpc_health_service(
    objects: dict[tuple[str, str], dict[str, Any]], config: Config
) -> None:
    container = server_container(objects)
    grpc_port = ports(container)["grpc"]
    assert container["readinessProbe"]["grpc"] == {"port": grpc_port}
    assert container["livenessProbe"]["grpc"] == {"port": grpc_port, "service": LIVENESS_SERVICE}


def test_pods_get_longer_to_stop_than_the_drain_and_the_grace_period(
    objects: dict[tuple[str, str], dict[str, Any]], config: Config
) -> None:
    pod = objects[("Deployment", "yunpian-sms")]["spec"]["template"]["spec"]
    server = config.server
    needed = server.drain_seconds + server.grace_period_seconds + SHUTDOWN_ANSWER_MARGIN_S
    assert pod["terminationGracePeriodSeconds"] > needed
    # Long enough for the readiness probe to see NOT_SERVING twice before the port closes.
    probe = server_container(objects)["readinessProbe"]
    assert server.drain_seconds >= probe["periodSeconds"] * probe["failureThreshold"]
    # A send in flight gets YunPian's answer within the grace period.
    assert server.grace_period_seconds >= config.yunpian.timeout_seconds + 1


def test_the_secrets_come_from_the_secret(objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    env = {item["name"]: item for item in server_container(objects)["env"]}
    secret = yaml.safe_load((KUBERNETES / "secret.example.yaml").read_text())
    for name in SECRET_ENV:
        reference = env[name]["valueFrom"]["secretKeyRef"]
        assert reference["name"] == secret["metadata"]["name"]
        assert reference["key"] in secret["stringData"]
    toml = objects[("ConfigMap", "yunpian-sms")]["data"]["config.toml"]
    assert "api_key" not in toml
    assert "fingerprint_secret" not in toml


def test_selectors_match_the_pods(objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    deployment = objects[("Deployment", "yunpian-sms")]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert objects[("Service", "yunpian-sms")]["spec"]["selector"].items() <= labels.items()
    pdb = objects[("PodDisruptionBudget", "yunpian-sms")]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert 1 <= pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]


def test_the_store_url_names_the_redis_service(
    objects: dict[tuple[str, str], dict[str, Any]], config: Config
) -> None:
    url = urlsplit(config.store.url)
    redis_service = objects[("Service", url.hostname or "")]
    assert url.port in {port["port"] for port in redis_service["spec"]["ports"]}
    redis = objects[("Deployment", "yunpian-sms-redis")]
    pod_labels = redis["spec"]["template"]["metadata"]["labels"]
    assert redis_service["spec"]["selector"].items() <= pod_labels.items()


def test_the_image_runs_the_config_the_deployment_mounts(
    objects: dict[tuple[str, str], dict[str, Any]],
) -> None:
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    entrypoint = re.search(r"^ENTRYPOINT (.+)$", dockerfile, re.MULTILINE)
    assert entrypoint is not None
    assert yaml.safe_load(entrypoint.group(1)) == ["yunpian-sms"]
    user = re.search(r"^USER (\d+)$", dockerfile, re.MULTILINE)
    assert user is not None
    assert int(user.group(1)) != 0
    container = server_container(objects)
    config_path = container["args"][container["args"].index("--config") + 1]
    [mount] = container["volumeMounts"]
    assert config_path == f"{mount['mountPath']}/config.toml"
    for path in re.findall(r"^COPY (\S+) ", dockerfile, re.MULTILINE):
        assert all((REPO / part).exists() for part in shlex.split(path))


async def test_the_liveness_service_serves_while_readiness_waits(
    start_server: StartServer,
) -> None:
    # A template YunPian has not approved keeps the server unready, but alive.
    templates = dict.fromkeys(["SignIn", "Register", "ForgotPassword", "Generic"], "新{{code}}")
    server = await start_server(make_config(templates={**templates, "verify_on_start": True}))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        ready = await stub.Check(health_pb2.HealthCheckRequest(service=""))
        alive = await stub.Check(health_pb2.HealthCheckRequest(service=LIVENESS_SERVICE))
    assert ready.status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert alive.status == health_pb2.HealthCheckResponse.SERVING
