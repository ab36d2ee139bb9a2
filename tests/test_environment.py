"""The environment files agree, and the code never unpickles."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _requirements() -> list[str]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def _environment_pip() -> list[str]:
    lines = (ROOT / "environment.yml").read_text().splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.strip() == "- pip:")
    out = []
    for ln in lines[start + 1:]:
        m = re.match(r"^\s+- (.+)$", ln)
        if not m:
            break
        out.append(m.group(1).strip())
    return out


def test_environment_yml_matches_requirements():
    assert _environment_pip() == _requirements()
    text = (ROOT / "environment.yml").read_text()
    assert re.search(r"^\s+- pip\s*$", text, re.M), "conda needs pip listed as a dependency"
    assert re.search(r"^\s+- python=", text, re.M)


def test_pyproject_dependencies_match_requirements():
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert deps == _requirements()
    assert "torch==2.14.1" in deps and "torchvision==0.29.1" in deps
    assert any(d.startswith("torch-pruning") for d in deps) and any(d.startswith("safetensors") for d in deps)


def test_no_unsafe_loading_in_package():
    for path in (ROOT / "modtools").rglob("*.py"):
        text = path.read_text()
        assert "import pickle" not in text, path
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, f"{path}: {call}"


def test_ci_calls_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make test" in ci and "make test" in readme and "make figures" in readme
