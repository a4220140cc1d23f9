"""The namespace layout of DESIGN §2: every package folder is installed, nothing shadows stdlib."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CODE_FOLDERS = ["crypto", "onion", "webapp"]


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_package_folder_is_listed_in_packages():
    config = pyproject()["tool"]["setuptools"]
    packages = set(config["packages"])
    mapping = config["package-dir"]
    for package, folder in mapping.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder)
            name = ".".join([package, *relative.parts])
            assert name in packages, f"{name} is missing from [tool.setuptools] packages"
    assert set(mapping) <= packages


def test_data_folders_have_no_init():
    for folder in ("locale", "static_nojs", "tests"):
        assert not list((ROOT / folder).rglob("__init__.py")), folder


def test_code_folders_are_typed_and_documented():
    for folder in CODE_FOLDERS:
        assert (ROOT / folder / "py.typed").exists()
        assert (ROOT / folder / "__init__.py").read_text().startswith('"""')


def test_no_javascript_in_static_nojs():
    files = [p for p in (ROOT / "static_nojs").rglob("*") if p.is_file()]
    assert files and all(p.suffix == ".css" for p in files)


def test_crypto_has_no_web_framework():
    for path in (ROOT / "crypto").rglob("*.py"):
        text = path.read_text()
        assert "flask" not in text.lower() and "werkzeug" not in text.lower(), path


def test_only_the_allowed_top_level_entries_exist():
    allowed = {
        "onion",
        "webapp",
        "static_nojs",
        "crypto",
        "locale",
        "tests",
        "torrc.example",
        "pyproject.toml",
        "README.md",
        ".ci",
        "Makefile",
        "docs",
        "examples",
        "LICENSE",
        ".gitignore",
    }
    import subprocess

    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    top = {path.split("/", 1)[0] for path in tracked}
    assert top <= allowed, top - allowed


def test_a_repeat_install_does_nothing():
    """`make test` has just installed everything: running its install again must be silent."""
    result = subprocess.run(
        ["make", "--no-print-directory", "install-test"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == "", result.stdout + result.stderr
