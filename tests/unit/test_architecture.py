"""The layout's import rules hold: import-linter checks the contracts in pyproject.toml
(pipeline never imports api, workers, flask or celery; workers never import api; api reaches
workers only through workers.chains and workers.app; config imports none of them; the
forecasting models import no SQLAlchemy; forecasting, analytics and delivery are independent;
no import cycles between areas or between the modules of one area)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _lint(cwd: Path, config: Path) -> subprocess.CompletedProcess:
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert lint, "import-linter is not installed (test extra)"
    return subprocess.run([lint, str(config), "--no-cache"], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_every_import_contract_is_kept():
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    assert len(contracts) >= 7
    result = _lint(ROOT, ROOT / "pyproject.toml")
    assert result.returncode == 0, result.stdout + result.stderr
    for contract in contracts:
        assert contract["name"].split()[0] in result.stdout


def test_a_broken_rule_is_reported(tmp_path):
    """The same contracts on a copy of the tree with one forbidden import added: the check fails."""
    for package in ("pipeline", "api", "workers", "config"):
        shutil.copytree(ROOT / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__", "static", "templates"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    daily = tmp_path / "pipeline" / "forecasting" / "daily.py"
    daily.write_text(daily.read_text() + "\nimport sqlalchemy  # noqa: E402, F401\n")
    result = _lint(tmp_path, tmp_path / "pyproject.toml")
    assert result.returncode != 0
    assert "forecasting models are pure" in result.stdout and "BROKEN" in result.stdout


def test_pipeline_modules_live_in_area_packages():
    loose = sorted(p.name for p in (ROOT / "pipeline").glob("*.py") if p.name != "__init__.py")
    assert not loose, f"modules outside an area package: {loose}"


def test_every_source_folder_is_a_package_the_wheel_finds():
    """setuptools' discovery (packages.find) takes regular packages only: a folder of modules
    without __init__.py would be left out of the wheel and work only from a checkout."""
    folders = {p.parent for top in ("pipeline", "api", "workers", "config")
               for p in (ROOT / top).rglob("*.py")}
    missing = sorted(str(f.relative_to(ROOT)) for f in folders if not (f / "__init__.py").exists())
    assert not missing, missing


def test_every_data_file_is_in_the_wheel():
    """Templates, static files and Alembic's script template ship in the wheel: each non-Python
    file under a package is matched by a [tool.setuptools.package-data] pattern."""
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    shipped = {path for package, patterns in package_data.items()
               for pattern in patterns for path in (ROOT / package.replace(".", "/")).glob(pattern)}
    data = {p for top in ("pipeline", "api", "workers", "config") for p in (ROOT / top).rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc")}
    missing = sorted(str(p.relative_to(ROOT)) for p in data - shipped)
    assert not missing, missing


def test_readme_tree_and_code_agree():
    """README's Architecture tree names every package of pipeline/ and api/ and every module
    of workers/, and names nothing that is not there."""
    readme = (ROOT / "README.md").read_text()
    tree = readme.split("The code is laid out by area", 1)[1].split("```", 2)[1]
    named = {token for line in tree.splitlines() for token in line.split()
             if token.endswith(("/", ".py")) and not token.startswith(("`", "("))}
    packages = {f"{p.parent.name}/" for top in ("pipeline", "api") for p in (ROOT / top).rglob("__init__.py")
                if "migrations" not in p.parts}
    workers = {p.name for p in (ROOT / "workers").glob("*.py")
               if p.name not in ("__init__.py", "runtime.py", "event_publishing.py")}
    missing = sorted((packages | workers) - named)
    assert not missing, f"not in README's tree: {missing}"
    existing = packages | workers | {"workers/", "config/", "beat_schedule.py", "app.py", "chains.py"}
    stale = sorted(named - existing)
    assert not stale, f"in README's tree but not in the code: {stale}"
