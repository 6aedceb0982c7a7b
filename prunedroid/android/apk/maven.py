"""Published Android libraries and tools, resolved by Maven from Maven Central into Maven's own cache (~/.m2, outside
the repository), each file checked against the SHA-1 Maven recorded beside it when it was downloaded."""
from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Mapping
from pathlib import Path
from xml.sax.saxutils import escape

from prunedroid.errors import PrunedroidError

MAVEN_TIMEOUT_S = 900  # a first resolution downloads ~60 MB per runtime library


class NotServed(PrunedroidError):
    """A library no repository Maven reaches serves (rather than a network or cache failure)."""


def _dependency(coordinates: str, transitive: bool) -> str:
    """One <dependency> of a pom: "group:artifact:version", with ":aar" after it for an Android library."""
    group, artifact, version, *kind = coordinates.split(":")
    exclusions = ("" if transitive else
                  "<exclusions><exclusion><groupId>*</groupId><artifactId>*</artifactId></exclusion></exclusions>")
    return (f"<dependency><groupId>{escape(group)}</groupId><artifactId>{escape(artifact)}</artifactId>"
            f"<version>{escape(version)}</version><type>{escape(kind[0] if kind else 'jar')}</type>{exclusions}"
            f"</dependency>")


def _check_sha1(path: Path) -> None:
    """A cached artifact whose bytes no longer match the .sha1 Maven stored beside it is refused, naming the folder
    to delete so that Maven downloads it again."""
    recorded = path.with_name(path.name + ".sha1")
    if not recorded.is_file():
        return
    expected = recorded.read_text().split()[0].lower() if recorded.read_text().split() else ""
    actual = hashlib.sha1(path.read_bytes()).hexdigest()  # noqa: S324 - Maven's own checksum, not a security hash
    if actual != expected:
        raise PrunedroidError(f"{path} in Maven's cache is damaged (SHA-1 {actual}, Maven recorded {expected}): delete "
                              f"{path.parent} and build again, and Maven downloads it anew")


def resolve(libraries: list[str], work: Path, mvn: str, env: Mapping[str, str],
            transitive: bool = True) -> list[Path]:
    """The files (jars, AARs) of `libraries` ("group:artifact:version[:aar]") and, if `transitive`, of their runtime
    dependencies, in Maven's order; `work` receives the pom Maven reads; `mvn` runs in `env`. A library no
    repository serves (NotServed), or no network with nothing cached, is one error naming the library."""
    work.mkdir(parents=True, exist_ok=True)
    items = "".join(_dependency(library, transitive) for library in libraries)
    (work / "pom.xml").write_text(f"<project><modelVersion>4.0.0</modelVersion><groupId>prunedroid.build</groupId>"
                                  f"<artifactId>apk</artifactId><version>1</version><dependencies>{items}"
                                  f"</dependencies></project>")
    listing = work / "classpath.txt"
    listing.unlink(missing_ok=True)
    try:
        result = subprocess.run([mvn, "-q", "-B", "dependency:build-classpath", f"-Dmdep.outputFile={listing.name}"],
                                cwd=work, env=env, capture_output=True, text=True, timeout=MAVEN_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise PrunedroidError(f"Maven took over {MAVEN_TIMEOUT_S} s to resolve {', '.join(libraries)}: check the "
                              f"network or a proxy in ~/.m2/settings.xml, then build again") from None
    said = result.stdout + result.stderr
    if result.returncode != 0:
        missing = [library for library in libraries if f"{_coordinate_text(library)} was not found" in said
                   or f"Could not find artifact {_coordinate_text(library)}" in said]
        if missing:
            raise NotServed(f"{', '.join(missing)} is not served by the Maven repositories this machine reaches "
                                  f"(Maven Central, ~/.m2/settings.xml)")
        if "Could not transfer" in said or "Unknown host" in said or "Connection" in said:
            raise PrunedroidError(f"Maven cannot reach Maven Central and {', '.join(libraries)} are not all in "
                                  f"~/.m2: connect once (or configure a mirror in ~/.m2/settings.xml) and build again")
        errors = [line.removeprefix("[ERROR]").strip() for line in said.splitlines() if line.startswith("[ERROR]")]
        tail = " | ".join(line for line in errors if line)
        raise PrunedroidError(f"Maven could not resolve {', '.join(libraries)}: {tail[:600]}")
    paths = [Path(text) for text in listing.read_text().strip().split(":") if text]
    for path in paths:
        _check_sha1(path)
    return paths


def _coordinate_text(library: str) -> str:
    """How Maven's messages spell a library: group:artifact:type:version."""
    group, artifact, version, *kind = library.split(":")
    return f"{group}:{artifact}:{kind[0] if kind else 'jar'}:{version}"
