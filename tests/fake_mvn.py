"""`mvn -q -B dependency:build-classpath -Dmdep.outputFile=FILE` as Maven answers it, over a local repository laid
out as ~/.m2/repository is (group/path/artifact/version/artifact-version.type) at $FAKE_M2: the classpath file of
each pom.xml dependency found there, else Maven's own failure for the first one missing (exit 1, [ERROR] lines).
Dependencies' own dependencies are not followed; other goals fail as an unknown lifecycle phase does."""
from __future__ import annotations

import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def main(args: list[str]) -> int:
    if "dependency:build-classpath" not in args:
        print(f"[ERROR] Unknown lifecycle phase \"{' '.join(a for a in args if not a.startswith('-'))}\".")
        return 1
    output = next(arg.split("=", 1)[1] for arg in args if arg.startswith("-Dmdep.outputFile="))
    repository = Path(os.environ["FAKE_M2"])
    paths = []
    for dependency in ET.parse("pom.xml").getroot().iter("dependency"):
        group, artifact, version, kind = (dependency.findtext(tag) for tag in ("groupId", "artifactId", "version",
                                                                               "type"))
        path = repository / Path(*group.split(".")) / artifact / version / f"{artifact}-{version}.{kind}"
        if not path.is_file():
            print(f"[ERROR] Failed to execute goal on project apk: Could not resolve dependencies for project "
                  f"prunedroid.build:apk:jar:1: {group}:{artifact}:{kind}:{version} was not found in "
                  f"https://repo.maven.apache.org/maven2 during a previous attempt. -> [Help 1]")
            print("[ERROR] ")
            return 1
        paths.append(str(path))
    Path(output).write_text(":".join(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
