"""deploy/k8s: valid against the Kubernetes schemas (offline, kubernetes-validate), replicas, probes on
the metrics endpoint, Secrets wired to real `_FILE` settings, a Job for migrate, and each container's
environment replayed through ``load_config`` with stand-in secret files."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from mailaudit.cli import VERBS, build_parser
from mailaudit.config import ENV_VARS, load_config
from mailaudit.dashboard.auth import access_policy, hash_password

K8S = Path(__file__).resolve().parent.parent / "deploy" / "k8s"
VERSION = "1.30.0"
KNOWN_ENV = set(ENV_VARS) | {v + "_FILE" for v in ENV_VARS} | {"MAILAUDIT_CONFIG", "HOME", "CLICKHOUSE_HOST"}


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    out = []
    for f in sorted(K8S.glob("*.yaml")):
        out.extend(d for d in yaml.safe_load_all(f.read_text()) if d)
    return out


def _by_kind(docs, kind):
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def _pod(workload):
    return workload["spec"]["template"]["spec"]


def test_every_manifest_is_valid_against_the_kubernetes_schema(docs):
    assert {d["kind"] for d in docs} >= {"Deployment", "Job", "Secret", "ConfigMap", "Service"}
    for d in docs:
        kubernetes_validate.validate(d, VERSION, strict=True)
    # The validator is live: a malformed Deployment is refused.
    bad = copy.deepcopy(_by_kind(docs, "Deployment")["mailaudit-detect"])
    bad["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, VERSION, strict=True)


def test_replicas_and_probes_on_the_metrics_endpoint(docs):
    deps = _by_kind(docs, "Deployment")
    assert deps["mailaudit-consume"]["spec"]["replicas"] >= 2
    assert deps["mailaudit-detect"]["spec"]["replicas"] >= 2
    parser = build_parser()
    for name, dep in deps.items():
        (c,) = _pod(dep)["containers"]
        assert c["args"][0] in VERBS
        args = parser.parse_args(c["args"])
        for probe in ("readinessProbe", "livenessProbe"):
            get = c[probe]["httpGet"]
            if args.verb in ("consume", "detect"):
                assert (get["path"], get["port"]) == ("/metrics", args.metrics_port) and args.metrics_addr == "0.0.0.0"
            else:
                assert get["path"] == "/_stcore/health"
        assert dep["spec"]["selector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()


def test_detector_replicas_share_no_volume(docs):
    detect = _by_kind(docs, "Deployment")["mailaudit-detect"]
    vols = {v["name"]: v for v in _pod(detect)["volumes"]}
    (c,) = _pod(detect)["containers"]
    state = next(e["value"] for e in c["env"] if e["name"] == "MAILAUDIT_STATE_DIR")
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == state)
    assert "emptyDir" in vols[mount["name"]], "the detector's state dir must be per pod (state lives in ClickHouse)"
    assert not any("persistentVolumeClaim" in v for v in vols.values())


def test_migrate_is_a_job_and_secrets_are_mounted_files(docs):
    (job,) = _by_kind(docs, "Job").values()
    (c,) = _pod(job)["containers"]
    assert c["args"] == ["migrate"] and _pod(job)["restartPolicy"] in ("OnFailure", "Never")
    secret = _by_kind(docs, "Secret")["mailaudit-secrets"]
    for w in [job, *_by_kind(docs, "Deployment").values()]:
        pod = _pod(w)
        (c,) = pod["containers"]
        assert pod["securityContext"]["runAsNonRoot"] and c["securityContext"]["readOnlyRootFilesystem"]
        vols = {v["name"]: v for v in pod["volumes"]}
        keys = {i["key"] for i in vols["secrets"]["secret"]["items"]}
        assert vols["secrets"]["secret"]["secretName"] == "mailaudit-secrets" and keys <= set(secret["stringData"])
        for e in c["env"]:
            assert e["name"] in KNOWN_ENV, f"{w['metadata']['name']}: {e['name']} is not a mailaudit setting"
            if e["name"].endswith("_FILE"):
                assert e["value"].removeprefix("/run/secrets/") in keys
            assert not re.search(r"PASSWORD$|HASH_KEY$", e["name"]), "a secret in the environment, not a file"


def _container_config(docs, name: str, tmp_path: Path):
    w = {**_by_kind(docs, "Deployment"), **_by_kind(docs, "Job")}[f"mailaudit-{name}"]
    (c,) = _pod(w)["containers"]
    cm = _by_kind(docs, "ConfigMap")["mailaudit-config"]["data"]
    stand_in = {"hash_key": "k" * 64,
                **{f"clickhouse_{u}_password": "pw-from-secret" for u in ("admin", "ingest", "detect", "dashboard")},
                "dashboard_operator_password_hash": hash_password("operator password", iterations=100_000),
                "dashboard_reader_password_hash": hash_password("reader password", iterations=100_000)}
    env: dict[str, str] = {}
    for e in c["env"]:
        if "valueFrom" in e:
            value = cm[e["valueFrom"]["configMapKeyRef"]["key"]]
        else:                                               # Kubernetes expands $(VAR) from earlier entries
            value = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], e["value"])
        env[e["name"]] = value
    for var, value in list(env.items()):
        if var.endswith("_FILE"):
            p = tmp_path / value.removeprefix("/run/secrets/")
            p.write_text(stand_in[p.name] + "\n")
            env[var] = str(p)
    toml = tmp_path / "mailaudit.toml"
    toml.write_text(cm["mailaudit.toml"])
    env["MAILAUDIT_CONFIG"] = str(toml)
    return load_config(env=env)


@pytest.mark.parametrize("name", ["migrate", "consume", "detect", "dashboard"])
def test_each_container_environment_loads_the_intended_config(docs, name, tmp_path):
    cfg = _container_config(docs, name, tmp_path)
    parts = cfg.clickhouse.parts()
    user = {"migrate": "mailaudit_admin", "consume": "mailaudit_ingest"}.get(name, f"mailaudit_{name}")
    assert (parts["host"], parts["port"], parts["user"], parts["database"]) == ("clickhouse", 9000, user, "mailaudit")
    assert parts["password"] == "pw-from-secret"
    assert cfg.require_hash_key() == b"k" * 64
    assert cfg.kafka.partitions == 12 and len(cfg.kafka.client_kwargs()["bootstrap_servers"]) == 3
    assert cfg.state_dir == "/var/lib/mailaudit"
    if name == "dashboard":
        assert access_policy(cfg.dashboard).login_required
