"""The s3a connector jars, resolved once with Maven into the native stack's cache.

Spark bundles the Hadoop client but not its S3 connector. `hadoop-aws` and the AWS SDK
v2 bundle it names (plus their runtime dependencies) are copied by a generated pom and
`mvn dependency:copy-dependencies` into `<WOTR_STACK_HOME>/cache/spark-jars`, then
passed to Spark with `spark.jars`. A marker file makes later calls free; a file lock
keeps two processes from resolving at the same time.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from wotr_domain.errors import WotrError

__all__ = ["ARTIFACTS", "JarResolutionError", "ensure_jars", "jars_dir", "render_pom"]

# hadoop-aws must match the Hadoop client inside pyspark (3.5.0 for pyspark 4.3.0); the
# SDK bundle is the version its POM names, listed explicitly so nothing else decides it.
ARTIFACTS: tuple[tuple[str, str, str], ...] = (
    ("org.apache.hadoop", "hadoop-aws", "3.5.0"),
    ("software.amazon.awssdk", "bundle", "2.35.4"),
)
MARKER = ".resolved.json"
_VERSIONED_JAR = re.compile(r"^(?P<artifact>.+?)-\d[^-]*(?:-[A-Za-z0-9.]+)*\.jar$")


class JarResolutionError(WotrError):
    """Maven is missing or could not fetch the s3a jars."""


def jars_dir() -> Path:
    """`<WOTR_CACHE_DIR>/spark-jars` (default `<WOTR_STACK_HOME>/cache`): shared by every clone."""
    from ..settings import Settings

    return Settings.from_env().cache_dir / "spark-jars"


def render_pom(artifacts: tuple[tuple[str, str, str], ...] = ARTIFACTS) -> str:
    """A throwaway pom whose only purpose is to list the artifacts to copy."""
    deps = "\n".join(
        f"    <dependency><groupId>{g}</groupId><artifactId>{a}</artifactId><version>{v}</version></dependency>"
        for g, a, v in artifacts
    )
    return (
        '<project xmlns="http://maven.apache.org/POM/4.0.0">\n'
        "  <modelVersion>4.0.0</modelVersion>\n"
        "  <groupId>wotr</groupId><artifactId>wotr-spark-jars</artifactId><version>1</version>\n"
        "  <packaging>pom</packaging>\n"
        f"  <dependencies>\n{deps}\n  </dependencies>\n"
        "</project>\n"
    )


def _coordinates(artifacts: tuple[tuple[str, str, str], ...]) -> list[str]:
    return [":".join(a) for a in artifacts]


def cached_jars(dest: Path, artifacts: tuple[tuple[str, str, str], ...] = ARTIFACTS) -> list[Path] | None:
    """The jars of a complete earlier resolution of exactly these artifacts, else None."""
    try:
        marker = json.loads((dest / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if marker.get("artifacts") != _coordinates(artifacts):
        return None
    jars = [dest / name for name in marker.get("jars", [])]
    if not jars or not all(j.is_file() for j in jars):
        return None
    return jars


def bundled_by_spark() -> set[str]:
    """Artifact names of the jars pyspark ships: copies of these would only conflict."""
    import pyspark

    folder = Path(pyspark.__file__).parent / "jars"
    return {m["artifact"] for p in folder.glob("*.jar") if (m := _VERSIONED_JAR.match(p.name))}


def ensure_jars(
    dest: Path | None = None,
    artifacts: tuple[tuple[str, str, str], ...] = ARTIFACTS,
    *,
    say: Callable[[str], None] = lambda _m: None,
    timeout: float = 1800.0,
) -> list[Path]:
    """The s3a jars, resolved with Maven on first use and reused afterwards."""
    dest = (dest or jars_dir()).resolve()
    if (jars := cached_jars(dest, artifacts)) is not None:
        return jars
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.parent / f".{dest.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be resolving right now
        if (jars := cached_jars(dest, artifacts)) is not None:
            return jars
        say(f"resolving the s3a jars with Maven into {dest} (once; several hundred MB)")
        return _resolve(dest, artifacts, timeout)


def _resolve(dest: Path, artifacts: tuple[tuple[str, str, str], ...], timeout: float) -> list[Path]:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise JarResolutionError("Maven (mvn) is needed once to fetch the s3a jars; install it (apt-get install maven)")
    work = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    (work / "jars").mkdir(parents=True)
    try:
        (work / "pom.xml").write_text(render_pom(artifacts), encoding="utf-8")
        cmd = [mvn, "-q", "-B", "-f", str(work / "pom.xml"), "dependency:copy-dependencies",
               f"-DoutputDirectory={work / 'jars'}", "-DincludeScope=runtime"]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as e:
            raise JarResolutionError(f"Maven did not finish within {timeout:.0f}s") from e
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
            raise JarResolutionError(f"Maven failed (exit {done.returncode}):\n{tail}")
        skip = bundled_by_spark()
        for jar in (work / "jars").glob("*.jar"):
            m = _VERSIONED_JAR.match(jar.name)
            if m and m["artifact"] in skip:
                jar.unlink()
        names = sorted(p.name for p in (work / "jars").glob("*.jar"))
        marker = {"artifacts": _coordinates(artifacts), "jars": names}
        (work / "jars" / MARKER).write_text(json.dumps(marker, indent=1), encoding="utf-8")
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(work / "jars", dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return [dest / n for n in names]
