"""The real tools that consume the deployment files, for the tests: promtool (Debian's prometheus package),
kustomize (pinned, built from the Go module proxy; kubectl's as a fallback), kubernetes-validate (PyPI) and
prometheus-operator's CRD schemas (npm). Each helper skips the calling test by name, with the reason, when its
tool is missing — never silently passes."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
#: The Kubernetes version every manifest is validated against (docs/DEPLOY.md "Prerequisites").
KUBERNETES_VERSION = "1.33.0"
#: npm package whose validators are compiled from prometheus-operator's CRD OpenAPI schemas.
CRD_SCHEMA_PACKAGE = "@kubernetes-models/prometheus-operator@6.0.0"
CRD_KINDS = ("PodMonitor", "ServiceMonitor", "PrometheusRule")
CRD_VALIDATOR = Path(__file__).parent / "tools" / "validate_crds.mjs"
#: Installs the pinned kustomize from the Go module proxy and prints its path (docs/DEPLOY.md).
KUSTOMIZE_INSTALL = DEPLOY / "local" / "kustomize" / "install.sh"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed (deploy/local/debian-packages.txt: `make system-deps`)")
    return path


def run(cmd: list[str], timeout_s: float = 120, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, **kwargs)


def kustomize_command() -> list[str]:
    """The pinned kustomize of deploy/local/kustomize/install.sh (``go install`` from the Go module proxy into the
    project's cache on first use, under a lock), else kubectl's built-in kustomize; the test is skipped, by name,
    only when there is neither Go nor kubectl."""
    cache = Path(os.environ.get("INGEST_CACHE_DIR") or Path.home() / ".cache" / "ingest_platform")
    cache.mkdir(parents=True, exist_ok=True)
    go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").is_file() else None)
    if go is not None:
        with open(cache / "kustomize.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            done = run([str(KUSTOMIZE_INSTALL)], timeout_s=960)
        assert done.returncode == 0, f"{KUSTOMIZE_INSTALL} failed:\n{done.stderr[-3000:]}"
        return [done.stdout.strip().splitlines()[-1], "build"]
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip(f"no kustomize: install Go >= 1.22 ({KUSTOMIZE_INSTALL} builds the pinned kustomize) or kubectl")
    return [kubectl, "kustomize"]


def kustomize(directory: Path, command: list[str] | None = None) -> list[dict[str, Any]]:
    """``kustomize build DIR``: the objects an ``kubectl apply -k`` would send."""
    command = command or kustomize_command()
    done = run([*command, str(directory)])
    assert done.returncode == 0, f"{' '.join(command)} {directory} failed:\n{done.stderr}"
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def yaml_documents(paths: Iterable[Path]) -> list[dict[str, Any]]:
    return [d for p in paths for d in yaml.safe_load_all(p.read_text(encoding="utf-8")) if d]


def kubernetes_errors(documents: Iterable[Mapping[str, Any]]) -> list[str]:
    """Built-in kinds against the OpenAPI schemas of KUBERNETES_VERSION (strict: unknown fields are errors)."""
    import kubernetes_validate

    errors = []
    for doc in documents:
        if doc.get("kind") in CRD_KINDS:
            continue
        name = f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name', '?')}"
        try:
            kubernetes_validate.validate(dict(doc), KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            errors.append(f"{name}: {'/'.join(map(str, error.absolute_path))}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:
            errors.append(f"{name}: {error.message}")
    return errors


def crd_node_modules() -> Path:
    """The npm package of CRD validators, installed once into the platform's cache (outside the repository)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("CRD schemas not checked: node/npm not installed (needed for "
                    f"{CRD_SCHEMA_PACKAGE}, the only packaged prometheus-operator CRD schemas found)")
    cache = Path(os.environ.get("INGEST_CACHE_DIR") or Path.home() / ".cache" / "ingest_platform")
    prefix = cache / "npm" / CRD_SCHEMA_PACKAGE.replace("/", "+").replace("@", "")
    modules = prefix / "node_modules"
    marker = modules / "@kubernetes-models" / "prometheus-operator" / "package.json"
    prefix.mkdir(parents=True, exist_ok=True)
    with open(prefix.parent / f"{prefix.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not marker.is_file():
            done = run([npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund", "--silent",
                        CRD_SCHEMA_PACKAGE], timeout_s=300)
            if done.returncode != 0 or not marker.is_file():
                pytest.skip(f"CRD schemas not checked: npm install {CRD_SCHEMA_PACKAGE} failed: {done.stderr[-500:]}")
    return modules


def crd_errors(documents: Iterable[Mapping[str, Any]]) -> list[str]:
    """prometheus-operator resources against their CRDs' schemas (node + the npm validators)."""
    crds = [dict(d) for d in documents if d.get("kind") in CRD_KINDS]
    if not crds:
        return []
    done = run(["node", str(CRD_VALIDATOR), str(crd_node_modules())], input=json.dumps(crds))
    assert done.returncode == 0, done.stderr
    return [f"{r['kind']}/{r['name']}: {'; '.join(r['errors'])}" for r in json.loads(done.stdout) if not r["ok"]]
