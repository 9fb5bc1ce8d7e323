"""The ETL handed to `spark-submit`: this file is the application's main file.

    spark-submit --master spark://127.0.0.1:7077 \\
        --conf spark.pyspark.python=$PWD/.venv/bin/python \\
        --driver-class-path "$(.venv/bin/python -m wotr_apps.etl.submit --classpath)" \\
        --py-files dist/wotr-etl.zip \\
        src/wotr_apps/etl/submit.py --date 2026-03-01

It takes `wotr etl`'s arguments and reads the same settings (`Settings.from_env()`); the
settings spark-submit was given win, the ETL's own fill in the rest
(`session.submitted_session`), then `wotr etl` runs on that session and its exit codes
hold. Two helpers for the command line, run with plain Python:

- `--classpath`: the s3a jars (resolved once with Maven, `jars.ensure_jars`) as a class
  path, for `--driver-class-path` (the driver's JVM is started by spark-submit, before
  this file runs, so only the command line can put them there);
- `--package DEST`: the zip for `--py-files` (`make etl-package`: dist/wotr-etl.zip), the
  packages wotr_domain, wotr_adapters and wotr_apps as they are in this checkout; the
  third-party dependencies come from the Python given as `spark.pyspark.python`.

docs/etl.md, "On a cluster", has the whole story.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    # Run as a file (as spark-submit does), Python puts this directory first on the path,
    # where cli.py, schema.py, session.py... would shadow modules of those names.
    del sys.path[0]

import zipfile  # noqa: E402

__all__ = ["PACKAGES", "classpath", "main", "package"]

PACKAGES = ("wotr_domain", "wotr_adapters", "wotr_apps")
_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed entry times: the same sources give the same zip


def package(dest: Path, packages: tuple[str, ...] = PACKAGES) -> Path:
    """A zip of `packages` (sources and data files, no bytecode) for spark-submit's `--py-files`."""
    import importlib

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in packages:
            root = Path(importlib.import_module(name).__file__ or "").parent
            for path in sorted(root.rglob("*")):
                if path.is_dir() or "__pycache__" in path.parts or path.suffix in {".pyc", ".pyo"}:
                    continue
                info = zipfile.ZipInfo(f"{name}/{path.relative_to(root).as_posix()}", _EPOCH)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                zf.writestr(info, path.read_bytes())
    tmp.replace(dest)
    return dest


def classpath() -> str:
    """The s3a jars of the settings' cache (resolved once), joined as a Java class path."""
    from wotr_apps.etl.jars import ensure_jars
    from wotr_apps.settings import Settings

    jars = ensure_jars(Settings.from_env().cache_dir / "spark-jars", say=lambda m: print(m, file=sys.stderr))
    return ":".join(str(j) for j in jars)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--package"]:
        if len(args) != 2:
            print("usage: submit.py --package DEST.zip", file=sys.stderr)
            return 2
        print(package(Path(args[1])))
        return 0
    if args == ["--classpath"]:
        print(classpath())
        return 0
    return _run(args)


def _run(args: list[str]) -> int:
    from wotr_apps.container import build_container
    from wotr_apps.etl import cli
    from wotr_apps.etl.jars import JarResolutionError
    from wotr_apps.etl.session import SparkOptions, submitted_session
    from wotr_apps.settings import Settings
    from wotr_domain.errors import ConfigError, Unavailable

    parsed = cli.parser().parse_args(args)  # exits 2 on bad arguments, as `wotr etl` does
    if parsed.history or parsed.bench is not None:
        return cli.main(args)  # no Spark on the command line's terms needed
    try:
        settings = Settings.from_env()
        container = build_container(settings, role="etl")
        try:
            root = container.etl_layout().root  # refuses the memory profile
        finally:
            container.shutdown_resources()
        spark = submitted_session(root, settings.s3, settings.cache_dir / "spark-jars",
                                  options=SparkOptions.from_settings(settings), say=cli.say)
    except ConfigError as e:
        print(f"wotr etl: configuration error: {e}", file=sys.stderr)
        return 2
    except Unavailable as e:
        print(f"wotr etl: {e}", file=sys.stderr)
        return 3
    except JarResolutionError as e:
        print(f"wotr etl: {e}", file=sys.stderr)
        return 4
    try:
        return cli.main(args)  # the container's Spark resource reuses this session and leaves it running
    finally:
        spark.stop()


if __name__ == "__main__":
    sys.exit(main())
