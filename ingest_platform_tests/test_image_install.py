"""deploy/docker/install.sh — the code image's install steps — in a clean folder, as the Dockerfile's builder
runs them (no image can be built here: no container engine, no base image). Slow: a venv with pyspark from
pip's cache and two Spark JVM starts (~2-4 minutes on 2 cores)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ingest_platform_tests.deploy_tools import DEPLOY, REPO

pytestmark = pytest.mark.slow
INSTALL = DEPLOY / "docker" / "install.sh"


def test_dockerfile_runs_the_install_script_and_drops_root():
    dockerfile = (DEPLOY / "docker" / "Dockerfile").read_text()
    assert "deploy/docker/install.sh /opt/ingest-platform" in dockerfile
    assert "openjdk-17-jre-headless" in dockerfile
    users = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("USER ")]
    assert users and users[-1] != "root" and not users[-1].startswith("0")
    # run pods get `args: [dagster, api, execute_run, ...]` without a command: the entrypoint must exec them
    assert 'ENTRYPOINT ["tini", "--"]' in dockerfile


def test_install_script_in_a_clean_folder_works_offline(tmp_path):
    if shutil.which("java") is None or shutil.which("unshare") is None:
        pytest.skip("java and unshare are needed (Java 17 for Spark, a network namespace for the offline check)")
    if subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode != 0:
        pytest.skip("unshare --net is not permitted here: the offline check cannot cut the network")
    prefix = tmp_path / "opt"
    env = {**os.environ}
    env.pop("INGEST_CACHE_DIR", None)
    seed = Path(env.get("INGEST_CACHE_DIR_SEED", Path.home() / ".cache" / "ingest_platform" / "ivy"))
    if seed.is_dir():  # resolution is checked, Maven Central's bandwidth is not
        env["IVY_SEED_DIR"] = str(seed)
    done = subprocess.run([str(INSTALL), str(prefix)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "check: Spark connectors load offline" in done.stdout
    # the installed code runs from the install, not from this checkout
    probe = subprocess.run(
        [str(prefix / "venv" / "bin" / "python"), "-c",
         "import ingest_platform, ingest_platform.definitions as d; print(ingest_platform.__file__)"],
        cwd=tmp_path, env={**env, "INGEST_CATALOG": str(prefix / "catalog"),
                           "INGEST_SPARK_PROFILES_DIR": str(prefix / "deploy" / "spark" / "profiles")},
        capture_output=True, text=True, timeout=300)
    assert probe.returncode == 0, probe.stderr[-2000:]
    assert str(prefix) in probe.stdout and str(REPO) not in probe.stdout
    assert (prefix / "deploy" / "spark" / "profiles" / "k8s.yaml").is_file()
    assert not (REPO / "build").exists()  # the build used a copy of the source
