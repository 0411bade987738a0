"""The ``tune`` chooser: time the candidates once, remember the winner (cuDNN's benchmark mode).

For a pass of a problem it has not seen, :func:`choose` runs every registered
algorithm that supports the case on fresh random operands of the problem's
shapes, once to warm up and then a few timed times (CUDA events on a GPU,
``time.perf_counter`` elsewhere), and keeps the fastest. The key is

    device name | dtype | TF32 flag | pass | geometry

(the CPU's "device name" includes torch's thread count, which changes the
timings). Winners live in memory and in a JSON file, :func:`cache_path`:
``$CORRMM_CACHE_DIR/tune.json``, else ``$XDG_CACHE_HOME/corrmm/tune.json``,
else ``~/.cache/corrmm/tune.json``. The file is read on a miss (another process
may have tuned the key) and rewritten atomically (a temporary file in the same
folder, then ``os.replace``), merged with what is already there, under a lock
(a thread lock and an ``flock`` on ``tune.json.lock``) so that concurrent
threads and processes keep every entry. Only a regular file is read or
replaced: a FIFO or device in its place never blocks a call. A file that
cannot be read or parsed, or that a different corrmm version or cache format
wrote, is ignored: never an exception, at worst a re-tune. An entry naming an
algorithm that no longer exists or no longer supports the case is ignored too.

Guarantees:
* the user's tensors are never touched: timing runs on tensors drawn from a
  private generator, so the global random stream is not advanced either;
* a candidate that raises (out of memory, a kernel that fails to compile) is
  skipped; when every candidate fails, :func:`choose` returns None (the op layer
  then runs the ``auto`` rule's choice) and nothing is remembered;
* the tuner is never entered recursively (a candidate that itself calls a corrmm
  op with ``algo="tune"`` gets the cached or the ``auto`` choice), and it does not
  time while a CUDA graph is being captured.
"""
from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import platform
import stat
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Dict, List, Optional

import torch

try:
    import fcntl
except ImportError:  # fcntl is POSIX only: on Windows only threads are serialised
    fcntl = None

from .algorithms import REGISTRY
from .algorithms.base import matmul_precision_like_convolution  # the ops' TF32 rule: timings match real runs
from .geometry import ConvGeometry

#: bumped whenever the meaning of a key or an entry changes; other values are stale
CACHE_FORMAT = 1
CACHE_FILE = "tune.json"

#: timed runs per candidate after the warm-up, and the wall time after which a
#: candidate stops being repeated (the first timed run always happens)
REPEATS = 3
REPEAT_BUDGET_S = 0.25
#: a candidate whose warm-up is this many times slower than the best timed so far
#: is not timed again: it cannot win, and slow candidates are where tuning time goes
HOPELESS_FACTOR = 20.0
#: how long a writer waits for another process's lock on the cache file before giving up on writing
LOCK_TIMEOUT_S = 10.0


_lock = threading.Lock()
#: serialises this process's read-merge-writes of the file (the flock serialises processes)
_file_lock = threading.Lock()
_memory: Dict[str, str] = {}
_memory_path: Optional[Path] = None
#: choices by a cheap tuple key (the string key and the cache path cost ~30 µs per call to build)
_recent: Dict[tuple, str] = {}
_local = threading.local()


# ---- where and under which key ---------------------------------------------------

def cache_path() -> Path:
    """The on-disk cache file (it need not exist yet)."""
    explicit = os.environ.get("CORRMM_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser() / CACHE_FILE
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"  # XDG: relative paths are invalid
    return base / "corrmm" / CACHE_FILE


def _corrmm_version() -> str:
    return str(getattr(sys.modules.get(__package__), "__version__", "unknown"))


@functools.lru_cache(maxsize=None)
def _cuda_name(index: int) -> str:
    return torch.cuda.get_device_name(index)


def device_name(device: torch.device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return _cuda_name(device.index if device.index is not None else torch.cuda.current_device())
    if device.type == "cpu":
        return f"cpu {platform.machine() or 'unknown'} {torch.get_num_threads()} threads"
    return device.type


def _tf32(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether float32 GEMMs run on TF32 units (the ops follow cuDNN's switch)."""
    return torch.device(device).type == "cuda" and dtype == torch.float32 and bool(torch.backends.cudnn.allow_tf32)


def geometry_key(g: ConvGeometry) -> str:
    def dims(values):
        return "x".join(str(v) for v in values)

    pads = ",".join(f"{low}:{high}" for low, high in g.padding)
    return (f"N{g.batch} C{g.in_channels} K{g.out_channels} in{dims(g.in_size)} k{dims(g.kernel)} "
            f"pad{pads} s{dims(g.stride)} d{dims(g.dilation)} g{g.groups}")


def cache_key(pass_name: str, geometry: ConvGeometry, device: torch.device, dtype: torch.dtype) -> str:
    return " | ".join([device_name(device), str(dtype).replace("torch.", ""),
                       "tf32" if _tf32(device, dtype) else "ieee", pass_name, geometry_key(geometry)])


# ---- the on-disk file --------------------------------------------------------------

def _read_entries(path: Path) -> Dict[str, dict]:
    """The entries of a valid cache file; {} for a missing, unreadable, corrupt or stale one.

    The file is opened without blocking and read only when it is a regular file: a FIFO or a
    device put in its place is ignored instead of hanging the caller.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return {}
    try:
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return {}
            data = json.loads(f.read().decode("utf-8"))
    except Exception:  # unreadable, not UTF-8, not JSON: all mean "no cache"
        return {}
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT \
            or data.get("corrmm_version") != _corrmm_version():
        return {}
    entries = data.get("entries")
    if not isinstance(entries, dict):
        return {}
    return {k: v for k, v in entries.items() if isinstance(v, dict) and isinstance(v.get("algo"), str)}


@contextlib.contextmanager
def _file_locked(path: Path):
    """Exclusive use of the cache file for one read-merge-write, among threads and processes.

    Threads take ``_file_lock``; processes an ``flock`` on ``tune.json.lock`` beside the file
    (where ``fcntl`` exists: elsewhere concurrent processes may still lose an entry, which costs a
    re-tune, never a wrong result). A lock held elsewhere for LOCK_TIMEOUT_S raises OSError
    (the entry is then kept in memory only).
    """
    with _file_lock:
        lock_path = path.with_name(path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NONBLOCK", 0), 0o644)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(f"{lock_path} is not a regular file")
            if fcntl is not None:
                deadline = time.monotonic() + LOCK_TIMEOUT_S
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() > deadline:
                            raise OSError(f"{lock_path} stayed locked for {LOCK_TIMEOUT_S} s") from None
                        time.sleep(0.005)
            yield
        finally:
            os.close(fd)  # releases the flock


def _write_entry(path: Path, key: str, entry: dict) -> None:
    """Merge one entry into the file under the lock: read what is there (other threads and processes
    tuned meanwhile), add the entry, write a temporary file beside it, flush it to disk and rename it
    over the file, so a reader, or a process after a crash, sees the old file or the new one, never
    half of one. A path that is not a regular file (a FIFO, a folder) is left alone."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _file_locked(path):
            if path.exists() and not path.is_file():
                raise OSError(f"{path} is not a regular file")
            entries = _read_entries(path)
            entries[key] = entry
            payload = {"format": CACHE_FORMAT, "corrmm_version": _corrmm_version(), "entries": entries}
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tune-", suffix=".tmp")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump(payload, f, indent=1, sort_keys=True)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
    except OSError as exc:  # a read-only or full disk costs the cache, not the convolution
        warnings.warn(f"corrmm: could not write the tuning cache {path}: {exc}", RuntimeWarning, stacklevel=2)


def clear_cache(disk: bool = False) -> None:
    """Forget every tuned choice in memory; with ``disk=True`` delete the cache file too."""
    global _memory_path
    with _lock:
        _memory.clear()
        _recent.clear()
        _memory_path = None
        if disk:
            with contextlib.suppress(OSError):
                cache_path().unlink()


# ---- timing -----------------------------------------------------------------------

def candidates(pass_name: str, geometry: ConvGeometry, device: torch.device, dtype: torch.dtype) -> List[str]:
    """Registered algorithms that can run this pass natively (an emulated one is never a contender
    and costs seconds to time, so it is left out)."""
    names = []
    for name, algorithm in REGISTRY.items():
        if algorithm.emulated_on(device):
            continue
        try:
            if not algorithm.not_supported_reasons(geometry, pass_name, device, dtype):
                names.append(name)
        except Exception:
            continue
    return names


def random_operands(pass_name: str, geometry: ConvGeometry, device: torch.device, dtype: torch.dtype):
    """Fresh operands of the pass's shapes, from a private generator (the global stream is untouched)."""
    g = geometry
    shapes = {
        "forward": (g.input_shape, g.weight_shape),
        "grad_input": (g.weight_shape, g.output_shape),
        "grad_weight": (g.input_shape, g.output_shape),
    }[pass_name]
    generator = torch.Generator(device=device)
    generator.manual_seed(0)
    return [torch.randn(shape, generator=generator, device=device, dtype=dtype) for shape in shapes]


class _Timer:
    """Seconds taken by a callable: CUDA events on a GPU (device time), perf_counter elsewhere."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def __call__(self, fn) -> float:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1000.0
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start


def time_candidate(name: str, pass_name: str, a: torch.Tensor, b: torch.Tensor, geometry: ConvGeometry,
                   best_so_far: float = math.inf) -> float:
    """Best time in seconds of one algorithm on operands ``a``, ``b`` after a warm-up run."""
    algorithm = REGISTRY[name]
    timer = _Timer(a.device)

    def run():
        algorithm.run(pass_name, a, b, geometry)

    with matmul_precision_like_convolution(a):
        timer.sync()
        wall = time.perf_counter()
        run()  # warm-up: allocator growth, library handles, kernel compilation
        timer.sync()
        wall = time.perf_counter() - wall
        if wall > HOPELESS_FACTOR * best_so_far:
            return wall
        times: List[float] = []
        while len(times) < REPEATS and (not times or sum(times) < REPEAT_BUDGET_S):
            times.append(timer(run))
    return min(times)


def benchmark(pass_name: str, geometry: ConvGeometry, device: torch.device, dtype: torch.dtype,
              names: Optional[List[str]] = None) -> Dict[str, float]:
    """Seconds per candidate on fresh random operands; candidates that raise are left out."""
    device = torch.device(device)
    if names is None:
        names = candidates(pass_name, geometry, device, dtype)
    try:
        a, b = random_operands(pass_name, geometry, device, dtype)
    except Exception:  # e.g. out of memory for the operands themselves
        return {}
    timings: Dict[str, float] = {}
    for name in names:
        try:
            timings[name] = time_candidate(name, pass_name, a, b, geometry, min(timings.values(), default=math.inf))
        except Exception:
            continue
    return timings


# ---- the chooser ---------------------------------------------------------------------

def _usable(name: Optional[str], pass_name, geometry, device, dtype) -> bool:
    """A name read from the file still names a registered algorithm that serves the case."""
    if name not in REGISTRY or REGISTRY[name].emulated_on(device):
        return False
    try:
        return not REGISTRY[name].not_supported_reasons(geometry, pass_name, device, dtype)
    except Exception:
        return False


def lookup(pass_name: str, geometry: ConvGeometry, device: torch.device, dtype: torch.dtype) -> Optional[str]:
    """The remembered choice (memory, then the file), or None."""
    global _memory_path
    key = cache_key(pass_name, geometry, device, dtype)
    path = cache_path()
    with _lock:
        if _memory_path != path:  # the cache folder changed (e.g. the environment): start over
            _memory.clear()
            _memory_path = path
        name = _memory.get(key)
    if name is not None:  # checked when it was stored: the hot path of every tuned call stays cheap
        return name
    name = _read_entries(path).get(key, {}).get("algo")
    if _usable(name, pass_name, geometry, device, dtype):
        with _lock:
            _memory[key] = name
        return name
    return None


def _capturing(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def choose(pass_name: str, geometry: ConvGeometry, device: torch.device, dtype: torch.dtype) -> Optional[str]:
    """The fastest supported algorithm for this pass: remembered, or timed now and remembered.

    None when nothing can be timed now (inside a timing run, during CUDA graph capture, or when every
    candidate failed): the caller then applies its own rule (:func:`corrmm.selection.tuned` uses ``auto``).
    """
    device = torch.device(device)
    recall = _recall_key(pass_name, geometry, device, dtype)
    name = _recent.get(recall)
    if name is not None:
        return name
    cached = lookup(pass_name, geometry, device, dtype)
    if cached is not None:
        _recent[recall] = cached
        return cached
    if getattr(_local, "active", False) or _capturing(device):
        return None
    _local.active = True
    try:
        timings = benchmark(pass_name, geometry, device, dtype)
    finally:
        _local.active = False
    if not timings:
        return None
    best = min(timings, key=timings.get)
    key = cache_key(pass_name, geometry, device, dtype)
    path = cache_path()
    with _lock:
        _memory[key] = best
        _recent[recall] = best
    _write_entry(path, key, {"algo": best, "ms": {name: round(t * 1e3, 6) for name, t in timings.items()}})
    return best


def _recall_key(pass_name: str, geometry: ConvGeometry, device: torch.device, dtype: torch.dtype) -> tuple:
    """Everything ``cache_key`` and ``cache_path`` depend on, as a tuple that is cheap to build."""
    env = os.environ
    return (pass_name, geometry, device, dtype, _tf32(device, dtype), torch.get_num_threads(),
            env.get("CORRMM_CACHE_DIR"), env.get("XDG_CACHE_HOME"), env.get("HOME"))


__all__ = ["cache_path", "clear_cache", "choose", "lookup", "benchmark", "candidates", "cache_key",
           "CACHE_FORMAT"]
