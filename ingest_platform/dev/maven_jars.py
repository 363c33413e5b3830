"""Runtime jars of a local Java service, resolved from Maven Central with a pom and cached per pom.

``resolve_jars(pom, "connect", ...)`` runs ``mvn dependency:copy-dependencies`` once into
``<cache>/<name>-<version>-<sha256(pom)[:12]>/libs`` (``~/.cache/ingest_platform`` or ``$INGEST_CACHE_DIR``)
and returns that folder for a ``-cp <libs>/*``; later calls with the same pom reuse it without Maven. A
``.complete`` marker is written only after Maven succeeded, so an interrupted download is redone; concurrent
callers serialise on a lock file. The local Kafka broker and the Kafka Connect worker use it.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

from ingest_platform.dev.local_process import default_cache_dir, file_lock, now_iso, run_captured, tail_text

_log = logging.getLogger(__name__)

MVN_TIMEOUT_S = 900.0


class MavenJarsError(RuntimeError):
    """The jars of a pom could not be resolved."""


def pom_property(pom: Path, name: str) -> str:
    """A ``<properties>`` value of the pom (e.g. ``kafka.version``)."""
    try:
        root = ET.parse(pom).getroot()
    except (OSError, ET.ParseError) as exc:
        raise MavenJarsError(f"cannot read the pom {pom}: {exc}") from exc
    node = root.find(f"m:properties/m:{name}", {"m": "http://maven.apache.org/POM/4.0.0"})
    if node is None:
        node = root.find(f"properties/{name}")
    if node is None or not (node.text or "").strip():
        raise MavenJarsError(f"{pom} has no <properties><{name}> element")
    return node.text.strip()


def jar_cache_dir(pom: Path, name: str, version_property: str, cache_dir: Path | None = None) -> Path:
    """``<cache>/<name>-<version>-<sha256(pom)[:12]>``: one folder per pom content."""
    if not pom.is_file():
        raise MavenJarsError(f"pom not found: {pom}")
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()[:12]
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    return root / f"{name}-{pom_property(pom, version_property)}-{digest}"


def resolve_jars(pom: Path, name: str, *, version_property: str, expect: str, cache_dir: Path | None = None,
                 what: str = "jars") -> Path:  # fmt: skip
    """The ``libs`` folder of ``pom``'s runtime jars, resolved with Maven on first use (see the module doc).

    ``expect`` is a glob one of the jars must match (a resolution that copied nothing useful fails).
    """
    target = jar_cache_dir(pom, name, version_property, cache_dir)
    libs, marker = target / "libs", target / ".complete"
    if marker.is_file():
        return libs
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(target.parent / f"{target.name}.lock"):
        if marker.is_file():  # another process finished while we waited
            return libs
        mvn = shutil.which("mvn")
        if mvn is None:
            raise MavenJarsError(
                f"Maven (`mvn`) is not on PATH; it is needed once to resolve the {what} from {pom}. "
                "Install Maven 3.8+ (and Java 17+) and retry."
            )
        if target.exists():
            shutil.rmtree(target)
        partial = target / "libs.partial"
        partial.mkdir(parents=True)
        cmd = [mvn, "-q", "-B", "-Dstyle.color=never", "-f", str(pom), "dependency:copy-dependencies",
               "-DincludeScope=runtime", f"-DoutputDirectory={partial}"]  # fmt: skip
        _log.info("resolving %s: %s", what, " ".join(cmd))
        try:
            proc = run_captured(cmd, MVN_TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:
            output = exc.output.decode(errors="replace") if isinstance(exc.output, bytes) else exc.output or ""
            raise MavenJarsError(
                f"mvn did not resolve the {what} from {pom} within {MVN_TIMEOUT_S:.0f} s:\n{tail_text(output)}"
            ) from exc
        if proc.returncode != 0:
            raise MavenJarsError(
                f"mvn failed (exit {proc.returncode}) resolving the {what} from {pom} (is Maven Central "
                f"reachable?):\n{tail_text(proc.stdout)}"
            )
        if not any(partial.glob(expect)):
            raise MavenJarsError(f"mvn succeeded but copied no {expect} from {pom} into {partial}")
        partial.rename(libs)
        marker.write_text(now_iso() + "\n")
    return libs
