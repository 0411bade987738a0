"""Process-wide settings: the column-buffer workspace cap and output poisoning.

Each setting has a setter and an environment variable, and both follow the
same rules:

============================  ==========================================================
``CORRMM_WORKSPACE_MB``       the cap in MiB: a positive, finite number (``512``,
                              ``0.5``); default 1024. Setter:
                              ``set_workspace_limit(num_bytes)``, a positive integer.
``CORRMM_POISON``             NaN-fill every output buffer before it is computed:
                              ``1/0``, ``true/false``, ``yes/no``, ``on/off`` (any
                              case); default off. Setter: ``poison_outputs(enabled)``,
                              a bool.
``CORRMM_AUTOTUNE``           Triton autotuning of the implicit kernels on a GPU, the
                              same on/off words; default on (read when the kernels load).
``CORRMM_CACHE_DIR``          the folder of the ``tune`` cache (:mod:`corrmm.tuning`
                              reads it on each lookup, so it may change at run time).
============================  ==========================================================

An empty value means the same as unset (the default). The variables are parsed
once, when corrmm is imported. A malformed value does not stop ``import corrmm``
(``corrmm --help`` and ``--version`` still work) but is reported, as a
``ValueError`` that names the variable, its value and the accepted forms, by
the first call that needs the setting, and by the ``corrmm`` command at start-up;
calling the setter replaces it.

The cap bounds the temporary memory of the algorithms that materialise a
column buffer (im2col, swapped, fft, gemm1x1's chunks): they process the batch
in chunks small enough for the buffer to fit.
"""
from __future__ import annotations

import contextlib
import math
import os
from typing import Dict, Optional

from .geometry import as_int

_DEFAULT_WORKSPACE_MB = 1024
_TRUE_WORDS = ("1", "true", "yes", "on")
_FALSE_WORDS = ("0", "false", "no", "off")

#: the environment variables with a malformed value, and the error each one raises when used
_environment_errors: Dict[str, ValueError] = {}


def _environment_value(name: str) -> Optional[str]:
    """The variable's value with surrounding blanks removed; None when unset or empty."""
    value = os.environ.get(name)
    if value is None or not value.strip():
        return None
    return value.strip()


def parse_workspace_mb(name: str, text: str) -> int:
    """Bytes for a workspace size written in MiB (``"512"``, ``"0.5"``); ValueError naming ``name``."""
    problem = f"{name}={text!r} is not a workspace size: expected a positive, finite number of MiB such as " \
              f"1024 or 0.5, without a unit (unset or empty for the default, {_DEFAULT_WORKSPACE_MB})"
    try:
        megabytes = float(text)
    except ValueError:
        raise ValueError(problem) from None
    if not math.isfinite(megabytes) or megabytes <= 0 or int(megabytes * 2**20) < 1:
        raise ValueError(problem)
    return int(megabytes * 2**20)


def parse_flag(name: str, text: str) -> bool:
    """An on/off word (1/0, true/false, yes/no, on/off, any case); ValueError naming ``name``."""
    word = text.strip().lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    raise ValueError(f"{name}={text!r} is not an on/off value: expected one of "
                     f"{', '.join(_TRUE_WORDS)} or {', '.join(_FALSE_WORDS)} (any case; unset or empty for the default)")


def _from_environment(name: str, parse, default):
    """The parsed variable; on a malformed value the default, with the error kept for the first use."""
    text = _environment_value(name)
    if text is None:
        return default
    try:
        return parse(name, text)
    except ValueError as exc:
        _environment_errors[name] = exc
        return default


def check_environment() -> None:
    """Raise the error of the first malformed corrmm environment variable, if any (the CLI calls this)."""
    for error in _environment_errors.values():
        raise error


def _raise_if_malformed(name: str) -> None:
    error = _environment_errors.get(name)
    if error is not None:
        raise error


# ---- the column-buffer workspace cap ------------------------------------------------

_workspace_limit_bytes = _from_environment("CORRMM_WORKSPACE_MB", parse_workspace_mb, _DEFAULT_WORKSPACE_MB * 2**20)


def workspace_limit() -> int:
    """The column-buffer cap in bytes."""
    if _environment_errors:
        _raise_if_malformed("CORRMM_WORKSPACE_MB")
    return _workspace_limit_bytes


def _positive_bytes(num_bytes) -> int:
    """The setter's rule: a positive integer (an int, a numpy integer or a 0-d integer tensor)."""
    rule = "set_workspace_limit: num_bytes must be a positive integer number of bytes"
    try:
        value = as_int(num_bytes, "num_bytes")
    except TypeError:
        raise TypeError(f"{rule}, got {num_bytes!r} ({type(num_bytes).__name__})") from None
    if value < 1:
        raise ValueError(f"{rule}, got {num_bytes!r}")
    return value


def set_workspace_limit(num_bytes: int) -> None:
    """Cap the column buffer of im2col-style algorithms at ``num_bytes`` (a positive integer).

    A chunk always holds at least one image, so a single image whose column
    buffer exceeds the cap still runs. Replaces ``CORRMM_WORKSPACE_MB``.
    """
    global _workspace_limit_bytes
    _workspace_limit_bytes = _positive_bytes(num_bytes)
    _environment_errors.pop("CORRMM_WORKSPACE_MB", None)


@contextlib.contextmanager
def workspace_limit_set_to(num_bytes: int):
    """Temporarily change the workspace cap (restored on exit)."""
    previous = _workspace_limit_bytes
    previous_error = _environment_errors.get("CORRMM_WORKSPACE_MB")
    set_workspace_limit(num_bytes)
    try:
        yield
    finally:
        set_workspace_limit(previous)
        if previous_error is not None:
            _environment_errors["CORRMM_WORKSPACE_MB"] = previous_error


# ---- debug poisoning: outputs start as NaN so an element no kernel wrote shows up ----

_poison = _from_environment("CORRMM_POISON", parse_flag, False)


def poisoning() -> bool:
    if _environment_errors:
        _raise_if_malformed("CORRMM_POISON")
    return _poison


@contextlib.contextmanager
def poison_outputs(enabled: bool = True):
    """Within this block, every output buffer an algorithm allocates is filled with NaN first."""
    global _poison
    if not isinstance(enabled, bool):
        raise TypeError(f"poison_outputs: enabled must be True or False, got {enabled!r}")
    previous, previous_error = _poison, _environment_errors.pop("CORRMM_POISON", None)
    _poison = enabled
    try:
        yield
    finally:
        _poison = previous
        if previous_error is not None:
            _environment_errors["CORRMM_POISON"] = previous_error


# ---- Triton autotuning of the implicit kernels (read when they are first loaded) ------

_autotune = _from_environment("CORRMM_AUTOTUNE", parse_flag, True)


def autotuning() -> bool:
    """Whether the implicit kernels autotune their tile configs on a GPU (``CORRMM_AUTOTUNE``)."""
    if _environment_errors:
        _raise_if_malformed("CORRMM_AUTOTUNE")
    return _autotune


def new_output(like, shape, dtype=None):
    """Allocate an output buffer like ``like`` (device, dtype); NaN-filled when poisoning."""
    out = like.new_empty(shape, dtype=dtype)
    if poisoning():
        out.fill_(float("nan"))
    return out
