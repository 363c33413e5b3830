"""The platform jar of JVM functions (docs/DESIGN.md §4): built once with javac into the cache, on the driver's
class path of local and standalone sessions, left out where it cannot be built or carried."""

from __future__ import annotations

import zipfile

import pytest

from ingest_platform.engines.spark import jvm_functions

pytest.importorskip("pyspark")


def test_the_jar_is_built_once_and_holds_the_class(tmp_path):
    jar = jvm_functions.platform_jar(tmp_path)
    assert jar is not None and jar.parent == tmp_path / "jvm"
    assert "ingest_platform/spark/UnknownKeys.class" in zipfile.ZipFile(jar).namelist()
    built = jar.stat().st_mtime_ns
    assert jvm_functions.platform_jar(tmp_path) == jar and jar.stat().st_mtime_ns == built  # cached, not rebuilt
    assert list((tmp_path / "jvm").iterdir()) == [jar]  # no build directory or partial file left behind


def test_the_driver_class_path_gets_the_jar_only_where_it_can_be_built_and_carried(tmp_path, monkeypatch):
    local = {"spark.master": "local[*]", jvm_functions.DRIVER_CLASS_PATH: "/opt/extra.jar"}
    conf = jvm_functions.with_platform_jar(local, tmp_path)
    paths = conf[jvm_functions.DRIVER_CLASS_PATH].split(":")
    assert paths[0] == "/opt/extra.jar" and paths[1].startswith(str(tmp_path / "jvm" / "ingest-platform-spark-"))
    k8s = {"spark.master": "k8s://https://kubernetes.default.svc"}
    assert jvm_functions.with_platform_jar(k8s, tmp_path) == k8s
    monkeypatch.setenv(jvm_functions.ENABLE_ENV, "0")
    assert jvm_functions.with_platform_jar(local, tmp_path) == local
    monkeypatch.delenv(jvm_functions.ENABLE_ENV)
    monkeypatch.setattr(jvm_functions.shutil, "which", lambda name: None)  # a machine without a JDK
    assert jvm_functions.platform_jar(tmp_path / "other") is None
    assert jvm_functions.with_platform_jar(local, tmp_path / "other") == local
