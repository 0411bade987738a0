"""The README's set-up: it starts from a fresh virtual environment, keeps its two commands (the
main job and the tests), and CI runs the test command exactly as the README writes it."""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _setup_block():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    quick_start = text[text.index("## Quick start"):text.index("\n## ", text.index("## Quick start") + 1)]
    block = re.search(r"```bash\n(.*?)```", quick_start, re.DOTALL).group(1)
    return [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_setup_starts_with_a_fresh_virtual_environment():
    commands = _setup_block()
    assert commands[0] == "python3 -m venv .venv && . .venv/bin/activate"
    assert len(commands) == 3
    assert commands[1].endswith("corrmm demo") and '".[demo]"' in commands[1]
    assert commands[2].endswith("python -m pytest -q") and '".[test]"' in commands[2]


def test_ci_runs_the_readme_commands_verbatim():
    venv, _, tests = _setup_block()
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert venv in ci and tests in ci
    assert ci.index(venv) < ci.index(tests)


def test_only_the_test_extra_brings_triton():
    text = (ROOT / "pyproject.toml").read_text()  # (tomllib is Python 3.11+; these lines are plain lists)

    def requirements(key):
        return ast.literal_eval(re.search(rf"^{key} = (\[.*?\])$", text, re.MULTILINE | re.DOTALL).group(1))

    def mentions_triton(key):
        return any(r.lower().startswith("triton") for r in requirements(key))

    assert not mentions_triton("dependencies") and not mentions_triton("demo")
    assert mentions_triton("test")
