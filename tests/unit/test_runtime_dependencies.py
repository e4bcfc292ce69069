"""Every third-party package the shipped code imports is provided by the runtime dependencies.

`pip install -e . && relaypacs demo` on a fresh machine installs [project].dependencies and
nothing else, so a module that imports a package only the test extra brings in (pydantic came
with schemathesis) passes every test here and fails there. This test reads the imports of
every module that ships (api/, pipeline/, workers/, config/ with their subpackages, found by
walking the folders, and beat_schedule.py), imports inside functions included, and checks each
third-party one against the packages that [project].dependencies installs: the declared ones
and, through the installed metadata, everything they require in turn (extras followed, the
test extra never). A package that is only a transitive requirement passes here; declare it
anyway when the code imports it directly, so that a dependency dropping it cannot break us.
"""

from __future__ import annotations

import ast
import importlib.metadata as metadata
import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_PACKAGES = ("api", "pipeline", "workers", "config")
SHIPPED_MODULES = ("beat_schedule.py",)
FIRST_PARTY = {"api", "pipeline", "workers", "config", "beat_schedule", "tests"}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def shipped_files() -> list[Path]:
    files = [p for folder in SHIPPED_PACKAGES for p in sorted((ROOT / folder).rglob("*.py"))]
    return files + [ROOT / name for name in SHIPPED_MODULES if (ROOT / name).exists()]


def third_party_imports(path: Path) -> set[str]:
    """Top-level names of the absolute imports anywhere in the file, less stdlib and ours."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.partition(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in FIRST_PARTY}


def runtime_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(text) for text in project.get("dependencies", [])]


def _applies(requirement: Requirement, extras: set[str]) -> bool:
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({"extra": extra}) for extra in extras | {""})


def runtime_closure() -> set[str]:
    """Normalised names of every distribution that installing the runtime dependencies brings."""
    seen: set[str] = set()
    expanded: set[tuple[str, frozenset[str]]] = set()
    pending = [r for r in runtime_requirements() if _applies(r, set())]
    while pending:
        requirement = pending.pop()
        name, extras = _normalise(requirement.name), frozenset(requirement.extras)
        seen.add(name)
        if (name, extras) in expanded:
            continue
        expanded.add((name, extras))
        try:
            requires = metadata.requires(requirement.name) or []
        except metadata.PackageNotFoundError:
            continue  # declared but not installed here: its own requirements cannot be read
        pending += [r for r in map(Requirement, requires) if _applies(r, set(extras))]
    return seen


def test_shipped_modules_are_found():
    files = shipped_files()
    relative = {f.relative_to(ROOT).as_posix() for f in files}
    # Guards the folder walk itself: an empty or partial list would make the test pass vacuously.
    assert "beat_schedule.py" in relative
    for folder in SHIPPED_PACKAGES:
        assert any(r.startswith(f"{folder}/") for r in relative), folder
    assert any("/migrations/versions/" in r for r in relative)


def test_third_party_imports_are_runtime_dependencies():
    provided = runtime_closure()
    distributions = metadata.packages_distributions()
    problems = []
    for path in shipped_files():
        for module in sorted(third_party_imports(path)):
            owners = {_normalise(d) for d in distributions.get(module, [])}
            where = path.relative_to(ROOT).as_posix()
            if not owners:
                problems.append(f"{where}: imports {module!r}, which no installed distribution provides")
            elif not owners & provided:
                problems.append(f"{where}: imports {module!r} ({', '.join(sorted(owners))}), "
                                "not installed by [project].dependencies")
    assert not problems, "declare these in pyproject.toml [project].dependencies:\n" + "\n".join(problems)


def _lock(name: str) -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements" / name).read_text().splitlines():
        if line and not line.startswith((" ", "#", "-")):
            package, _, version = line.partition(" ")[0].partition("==")
            pins[_normalise(package)] = version
    return pins


def test_locks_agree_with_pyproject_and_each_other():
    """`make demo`, CI and the image install the locks, not the ranges: a dependency added to
    pyproject.toml without `make lock` would be missing there and still pass here."""
    runtime, test = _lock("runtime.txt"), _lock("test.txt")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extra = [Requirement(text) for text in project["optional-dependencies"]["test"]]
    for lock, requirements in ((runtime, runtime_requirements()), (test, runtime_requirements() + extra)):
        for requirement in requirements:
            version = lock.get(_normalise(requirement.name))
            assert version is not None, f"{requirement.name} is not in the lock: run `make lock`"
            assert requirement.specifier.contains(version, prereleases=True), (
                f"{requirement.name}=={version} is outside {requirement}: run `make lock`")
    assert {n: v for n, v in test.items() if n in runtime} == runtime
    assert runtime.keys() <= test.keys()


def test_closure_follows_extras_and_ignores_the_test_extra():
    provided = runtime_closure()
    # celery[redis] brings redis through celery's own "redis" extra; pytest is test-only.
    assert {"celery", "kombu", "sqlalchemy"} <= provided
    assert "pytest" not in provided
    assert "schemathesis" not in provided
