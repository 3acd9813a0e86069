"""The deployment recipe in deploy/: manifests that agree with each other and with the server."""

from __future__ import annotations

import re
import shlex
import tomllib
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
from yunpian_sms_server.config import Config, ConfigError, parse_config
from yunpian_sms_server.listen_addresses import parse_listen

REPO = Path(__file__).resolve().parent.parent
KUBERNETES = REPO / "deploy" / "kubernetes"
# What the real Secret would hold (the keys of secret.example.yaml), made up for the tests.
SECRET = {
    "api-key": "0123456789abcdef0123456789abcdef",
    "fingerprint-secret": "f" * 64,
    "verify-secret": "e" * 64,
    "redis-password": "0123abcd" * 8,
    "signin-service-token-sha256": hash_token("signin-token-for-the-tests"),
    "ops-token-sha256": hash_token("ops-token-for-the-tests"),
}
_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in env values and args: defined variables are replaced,
    others left as written, $$ is a $."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _REFERENCE.sub(replace, text)


def container_env(container: dict[str, Any], secret: dict[str, str]) -> dict[str, str]:
    """The environment Kubernetes gives the container, its secretKeyRefs read from `secret`."""
    env: dict[str, str] = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = expand(item["value"], env)
            continue
        reference = item["valueFrom"]["secretKeyRef"]
        assert reference["name"] == "yunpian-sms", item
        if reference["key"] in secret:
            env[item["name"]] = secret[reference["key"]]
        else:
            assert reference.get("optional"), f"the pod cannot start without {reference['key']}"
    return env


def example_secret() -> dict[str, str]:
    return dict(yaml.safe_load((KUBERNETES / "secret.example.yaml").read_text())["stringData"])


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
    toml = objects[("ConfigMap", "yunpian-sms")]["data"]["config.toml"]
    return parse_config(tomllib.loads(toml), container_env(server_container(objects), SECRET))


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


def test_each_secret_comes_from_the_secret(
    objects: dict[tuple[str, str], dict[str, Any]], config: Config
) -> None:
    toml = objects[("ConfigMap", "yunpian-sms")]["data"]["config.toml"]
    assert not re.search(r"api_key|secret|token_sha256|[0-9a-f]{32}", toml)
    assert urlsplit(tomllib.loads(toml)["store"]["url"]).password is None
    assert config.yunpian.api_key == SECRET["api-key"]
    assert config.store.fingerprint_secret == SECRET["fingerprint-secret"]
    assert config.verify.secret == SECRET["verify-secret"]
    assert urlsplit(config.store.url).password == SECRET["redis-password"]
    assert config.auth is not None
    assert {caller.name: caller.token_sha256 for caller in config.auth.callers} == {
        "signin-service": SECRET["signin-service-token-sha256"],
        "ops": SECRET["ops-token-sha256"],
    }
    read = {
        item["valueFrom"]["secretKeyRef"]["key"]
        for name in ("yunpian-sms", "yunpian-sms-redis")
        for container in objects[("Deployment", name)]["spec"]["template"]["spec"]["containers"]
        for item in container.get("env", [])
        if "valueFrom" in item
    }
    assert read == set(example_secret()) == set(SECRET)


def test_nothing_in_the_example_secret_works(
    objects: dict[tuple[str, str], dict[str, Any]],
) -> None:
    env = container_env(server_container(objects), example_secret())
    toml = objects[("ConfigMap", "yunpian-sms")]["data"]["config.toml"]
    with pytest.raises(ConfigError) as caught:
        parse_config(tomllib.loads(toml), env)
    problems = {problem.key: problem.problem for problem in caught.value.problems}
    assert set(problems) == set(env) - {"REDIS_PASSWORD"}, problems
    for key, problem in problems.items():
        assert env[key] not in problem


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
    # The password Redis requires is the one in the servers' URL.
    [container] = redis["spec"]["template"]["spec"]["containers"]
    args = [expand(arg, container_env(container, SECRET)) for arg in container["args"]]
    assert args[args.index("--requirepass") + 1] == url.password


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
