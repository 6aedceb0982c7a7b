"""What app/build.gradle declares, read once, so that a build without Gradle builds the app Gradle would: the
package, SDK levels, version, BuildConfig fields, each flavor's runtime library and ABIs, and the files stored
uncompressed. build.gradle stays the one place these are written."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from prunedroid.errors import PrunedroidError


@dataclass(frozen=True)
class GradleApp:
    """The app module's declarations. `runtime_library`: flavor -> "group:artifact:version" of its runtime (an AAR);
    `abis`: flavor -> the ABIs its abiFilters package; `build_config`: BuildConfig field -> string value."""

    namespace: str
    application_id: str
    compile_sdk: int
    min_sdk: int
    target_sdk: int
    version_code: int
    version_name: str
    build_config: dict[str, str]
    runtime_library: dict[str, str]
    abis: dict[str, tuple[str, ...]]
    no_compress: tuple[str, ...]  # file name suffixes, without the dot


def _one(pattern: str, text: str, what: str, path: Path) -> str:
    found = re.search(pattern, text, flags=re.M | re.S)
    if not found:
        raise PrunedroidError(f"{path} declares no {what}; restore it from the repository (git checkout {path.name})")
    return found.group(1)


def read_gradle_app(app_dir: Path) -> GradleApp:
    """Parses app_dir/app/build.gradle (the subset of Groovy this project writes: `def name = '...'` variables,
    quoted values, one productFlavors block)."""
    path = app_dir / "app" / "build.gradle"
    text = path.read_text()
    variables = dict(re.findall(r"^def (\w+) = '([^']+)'", text, flags=re.M))

    def expand(value: str) -> str:
        undefined = [name for name in re.findall(r"\$\{(\w+)\}", value) if name not in variables]
        if undefined:
            raise PrunedroidError(f"{path} uses ${{{undefined[0]}}} without a `def {undefined[0]} = '...'`; "
                                  f"restore it from the repository (git checkout {path.name})")
        return re.sub(r"\$\{(\w+)\}", lambda match: variables[match.group(1)], value)

    fields = {name: expand(value) for name, value in
              re.findall(r"buildConfigField 'String', '(\w+)', \"\\\"(.+?)\\\"\"", text)}
    libraries = {flavor: expand(coordinates) for flavor, coordinates in
                 re.findall(r"^    (\w+)Implementation \"([^\"]+)\"", text, flags=re.M)}
    declared = _one(r"productFlavors \{\n(.*?)\n    \}", text, "productFlavors", path)
    flavors = dict(re.findall(r"^        (\w+) \{\n(.*?)\n        \}", declared, flags=re.M | re.S))
    abis = {flavor: tuple(re.findall(r"'([\w-]+)'", _one(r"abiFilters ([^\n]+)", body, f"abiFilters for {flavor}",
                                                        path)))
            for flavor, body in flavors.items()}
    if not flavors or set(libraries) != set(flavors):
        raise PrunedroidError(f"{path}: each product flavor must declare one runtime library "
                              f"(<flavor>Implementation), found flavors {sorted(flavors)} and {sorted(libraries)}")
    return GradleApp(
        namespace=_one(r"^\s*namespace '([\w.]+)'", text, "namespace", path),
        application_id=_one(r"^\s*applicationId '([\w.]+)'", text, "applicationId", path),
        compile_sdk=int(_one(r"^\s*compileSdk (\d+)", text, "compileSdk", path)),
        min_sdk=int(_one(r"^\s*minSdk (\d+)", text, "minSdk", path)),
        target_sdk=int(_one(r"^\s*targetSdk (\d+)", text, "targetSdk", path)),
        version_code=int(_one(r"^\s*versionCode (\d+)", text, "versionCode", path)),
        version_name=_one(r"^\s*versionName '([^']+)'", text, "versionName", path),
        build_config=fields, runtime_library=libraries, abis=abis,
        no_compress=tuple(re.findall(r"'(\w+)'", _one(r"noCompress \+= \[([^\]]*)\]", text, "noCompress", path))))
