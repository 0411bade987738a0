"""Clean test output: warnings from corrmm's modules and tests are errors, and what the compile
backend loads from torch warns nothing once torch's own deprecation notice is set aside."""
import ast
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _configured_filters():
    text = (ROOT / "pyproject.toml").read_text()
    block = re.search(r"^filterwarnings = (\[.*?\])", text, re.MULTILINE | re.DOTALL).group(1)
    return ast.literal_eval(re.sub(r"#.*", "", block))


@pytest.mark.parametrize("module", ["corrmm.tuning", "corrmm", "tests.test_tuning"])
def test_a_warning_from_the_project_fails_the_test(module):
    with pytest.raises(RuntimeWarning):
        warnings.warn_explicit("probe", RuntimeWarning, "probe.py", 1, module=module)


def test_a_warning_from_elsewhere_is_only_reported():
    with pytest.warns(RuntimeWarning):
        warnings.warn_explicit("probe", RuntimeWarning, "probe.py", 1, module="numpy.core")


_LOAD_EVERYTHING = """
import warnings, sys
warnings.simplefilter("error")  # every warning raises, but for the ones the configuration sets aside
for spec in FILTERS:
    action, message, category, module = (spec.split(":") + ["", "", ""])[:4]
    if action == "ignore":
        warnings.filterwarnings(action, message=message, category=getattr(__builtins__, category, Warning),
                                module=module)
import torch, corrmm, corrmm.compile, corrmm.cli
from torch._inductor.compile_fx import compile_fx
print("clean")
"""


def test_loading_corrmm_and_the_compile_backend_warns_nothing_else():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    code = _LOAD_EVERYTHING.replace("FILTERS", repr(_configured_filters()))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.stdout.strip() == "clean", done.stderr[-3000:]
