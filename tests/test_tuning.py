"""The ``tune`` chooser: it picks a supported algorithm, remembers it in memory and on disk,
and shrugs off a corrupt, stale or unwritable cache."""
import contextlib
import json
import multiprocessing
import os
import signal
import stat
import subprocess
import sys
import threading

import pytest
import torch

import corrmm
from corrmm import tuning
from corrmm.algorithms import CHOOSERS, REGISTRY
from corrmm.geometry import make_geometry

from tests.reference import DEVICE, randn, reference_corr, seeded_generator

# a 1x1 layer (gemm1x1 and fft compete) and a strided one (only the column-buffer algorithms serve it)
LAYERS = [
    ((2, 6, 9, 8), (4, 6, 1, 1), dict()),
    ((2, 4, 9, 7), (6, 2, 3, 2), dict(border_mode=((1, 0), (2, 1)), subsample=(2, 1), num_groups=2)),
]


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    """Every test tunes into its own empty cache folder and starts with an empty memory."""
    monkeypatch.setenv("CORRMM_CACHE_DIR", str(tmp_path))
    tuning.clear_cache()
    yield tmp_path
    tuning.clear_cache()


@pytest.fixture
def timed(monkeypatch):
    """(name, pass) of every candidate timed, in order (the real timing still runs)."""
    calls = []
    real = tuning.time_candidate

    def counting(name, pass_name, *args, **kwargs):
        calls.append((name, pass_name))
        return real(name, pass_name, *args, **kwargs)

    monkeypatch.setattr(tuning, "time_candidate", counting)
    return calls


def _geometry(layer):
    in_shape, w_shape, kw = layer
    return make_geometry(in_shape, w_shape, kw.get("border_mode", "valid"), kw.get("subsample", 1),
                         kw.get("filter_dilation", 1), kw.get("num_groups", 1))


def test_tune_is_an_accepted_algo():
    assert "tune" in CHOOSERS and "tune" not in corrmm.algorithms()


def test_cache_path_follows_the_environment(monkeypatch, tmp_path):
    assert tuning.cache_path() == tmp_path / "tune.json"
    monkeypatch.delenv("CORRMM_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert tuning.cache_path() == tmp_path / "xdg" / "corrmm" / "tune.json"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert tuning.cache_path() == tmp_path / "home" / ".cache" / "corrmm" / "tune.json"


@pytest.mark.parametrize("index", range(len(LAYERS)))
def test_all_passes_pick_a_supported_algorithm_and_match_torch(index, timed):
    in_shape, w_shape, kw = LAYERS[index]
    g = _geometry(LAYERS[index])
    gen = seeded_generator("tune", index)
    x, w = randn(in_shape, gen), randn(w_shape, gen)
    dy = randn(g.output_shape, gen)
    originals = [t.clone() for t in (x, w, dy)]
    versions = [t._version for t in (x, w, dy)]
    rng_state = torch.get_rng_state()

    y = corrmm.corr2d(x, w, algo="tune", **kw)
    dx = corrmm.corr2d_grad_input(w, dy, in_shape[2:], algo="tune", **kw)
    dw = corrmm.corr2d_grad_weight(x, dy, w_shape[2:], algo="tune", **kw)

    x_ref, w_ref = x.detach().requires_grad_(), w.detach().requires_grad_()
    y_ref = reference_corr(x_ref, w_ref, g.padding, g.stride, g.dilation, g.groups)
    dx_ref, dw_ref = torch.autograd.grad(y_ref, (x_ref, w_ref), dy)
    for ours, ref in ((y, y_ref), (dx, dx_ref), (dw, dw_ref)):
        torch.testing.assert_close(ours, ref.detach())
    for pass_name in ("forward", "grad_input", "grad_weight"):
        name = tuning.lookup(pass_name, g, x.device, x.dtype)
        assert name in REGISTRY
        assert not REGISTRY[name].not_supported_reasons(g, pass_name, x.device, x.dtype)
    # only supported candidates were timed, and the caller's tensors and random stream are untouched
    assert {p for _, p in timed} == {"forward", "grad_input", "grad_weight"}
    assert all(not REGISTRY[n].not_supported_reasons(g, p, x.device, x.dtype) for n, p in timed)
    for t, original, version in zip((x, w, dy), originals, versions):
        assert torch.equal(t, original) and t._version == version
    assert torch.equal(torch.get_rng_state(), rng_state)


def test_strided_layer_never_times_the_stride_1_algorithms(timed):
    g = _geometry(LAYERS[1])
    tuning.choose("forward", g, DEVICE, torch.float32)
    assert timed and not {"fft", "gemm1x1"} & {name for name, _ in timed}


def test_cache_file_written_and_reused(cache_dir, timed):
    g = _geometry(LAYERS[0])
    first = tuning.choose("forward", g, DEVICE, torch.float32)
    assert timed
    data = json.loads((cache_dir / "tune.json").read_text())
    assert data["format"] == tuning.CACHE_FORMAT and data["corrmm_version"] == corrmm.__version__
    [entry] = data["entries"].values()
    assert entry["algo"] == first and set(entry["ms"]) == {name for name, _ in timed}
    assert not list(cache_dir.glob(".tune-*")), "temporary file left behind"

    timed.clear()
    assert tuning.choose("forward", g, DEVICE, torch.float32) == first  # from memory
    tuning.clear_cache()
    assert tuning.choose("forward", g, DEVICE, torch.float32) == first  # from the file
    assert not timed

    # another key is merged into the same file, not written over the first
    tuning.choose("grad_weight", g, DEVICE, torch.float32)
    assert len(json.loads((cache_dir / "tune.json").read_text())["entries"]) == 2


def test_memory_cache_does_not_need_the_file(cache_dir, timed):
    g = _geometry(LAYERS[0])
    first = tuning.choose("forward", g, DEVICE, torch.float64)
    (cache_dir / "tune.json").unlink()
    timed.clear()
    assert tuning.choose("forward", g, DEVICE, torch.float64) == first and not timed


@pytest.mark.parametrize("content", [b"", b"{not json", b"\xff\xfe\x00garbage", b"[1, 2, 3]",
                                     b'{"format": 1, "corrmm_version": "0.1.0", "entries": 7}'])
def test_corrupt_file_is_ignored(cache_dir, timed, content):
    (cache_dir / "tune.json").write_bytes(content)
    g = _geometry(LAYERS[0])
    name = tuning.choose("forward", g, DEVICE, torch.float32)
    assert timed and name in REGISTRY
    data = json.loads((cache_dir / "tune.json").read_text())  # rewritten as a valid file
    assert [e["algo"] for e in data["entries"].values()] == [name]


def _forge(cache_dir, g, algo, **fields):
    payload = {"format": tuning.CACHE_FORMAT, "corrmm_version": corrmm.__version__,
               "entries": {tuning.cache_key("forward", g, DEVICE, torch.float32): {"algo": algo, "ms": {}}}}
    payload.update(fields)
    (cache_dir / "tune.json").write_text(json.dumps(payload))


def test_valid_forged_entry_is_obeyed(cache_dir, timed):
    """The control for the stale-file tests: a current file's entry is used without timing."""
    g = _geometry(LAYERS[0])
    _forge(cache_dir, g, "swapped")
    assert tuning.choose("forward", g, DEVICE, torch.float32) == "swapped" and not timed


@pytest.mark.parametrize("fields", [dict(corrmm_version="0.0.0-other"), dict(format=tuning.CACHE_FORMAT + 1),
                                    dict(format=None)])
def test_stale_file_is_ignored(cache_dir, timed, fields):
    g = _geometry(LAYERS[0])
    _forge(cache_dir, g, "swapped", **fields)
    name = tuning.choose("forward", g, DEVICE, torch.float32)
    assert timed and name in REGISTRY
    data = json.loads((cache_dir / "tune.json").read_text())
    assert data["corrmm_version"] == corrmm.__version__ and data["format"] == tuning.CACHE_FORMAT


@pytest.mark.parametrize("algo", ["no-such-algorithm", "fft"])
def test_entry_that_cannot_serve_is_ignored(cache_dir, timed, algo):
    """An unknown name, or one that does not support the case (fft for a strided layer), re-tunes."""
    g = _geometry(LAYERS[1])
    _forge(cache_dir, g, algo)
    assert tuning.choose("forward", g, DEVICE, torch.float32) != algo and timed


def test_failing_candidates_are_skipped(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("simulated kernel failure")

    g = _geometry(LAYERS[0])
    # patch the classes: monkeypatch restores a class attribute exactly, an instance's only approximately
    monkeypatch.setattr(type(REGISTRY["im2col"]), "forward", broken)
    monkeypatch.setattr(type(REGISTRY["gemm1x1"]), "forward", broken)
    assert tuning.choose("forward", g, DEVICE, torch.float32) not in ("im2col", "gemm1x1")


def test_all_candidates_failing_falls_back_to_auto(cache_dir, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("simulated kernel failure")

    g = _geometry(LAYERS[0])
    for algorithm in REGISTRY.values():
        monkeypatch.setattr(type(algorithm), "grad_input", broken)
    assert tuning.choose("grad_input", g, DEVICE, torch.float32) is None  # the tuner has no answer
    chosen = corrmm.selection.tuned("grad_input", g, DEVICE, torch.float32)   # so the op layer uses auto's
    assert chosen.name == corrmm.selection.auto_choice("grad_input", g, DEVICE, torch.float32)
    assert not (cache_dir / "tune.json").exists()  # nothing was measured, nothing remembered


def test_not_entered_recursively(monkeypatch, timed):
    """A candidate that itself calls a corrmm op with algo="tune" gets a choice without a nested tuning."""
    inner_results = []
    real_forward = type(REGISTRY["swapped"]).forward

    def calls_tune(self, input, weight, g):
        inner_x = torch.ones(1, 2, 5, 5, dtype=input.dtype, device=input.device)
        inner_w = torch.ones(3, 2, 2, 2, dtype=input.dtype, device=input.device)
        inner_results.append(corrmm.corr2d(inner_x, inner_w, algo="tune"))
        return real_forward(self, input, weight, g)

    monkeypatch.setattr(type(REGISTRY["swapped"]), "forward", calls_tune)
    g = _geometry(LAYERS[0])
    tuning.choose("forward", g, DEVICE, torch.float32)
    assert inner_results and all(torch.equal(r, torch.full_like(r, 8.0)) for r in inner_results)
    assert timed.count(("swapped", "forward")) == 1  # the inner calls timed nothing
    assert len(timed) == len(set(timed))
    assert tuning.lookup("forward", make_geometry((1, 2, 5, 5), (3, 2, 2, 2)), DEVICE, torch.float32) is None


def test_unwritable_cache_warns_and_still_chooses(cache_dir, monkeypatch):
    blocker = cache_dir / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("CORRMM_CACHE_DIR", str(blocker / "sub"))  # a folder under a file: cannot exist
    g = _geometry(LAYERS[0])
    with pytest.warns(RuntimeWarning, match="tuning cache"):
        name = tuning.choose("forward", g, DEVICE, torch.float32)
    assert name in REGISTRY


# ---- concurrency, non-regular files and crashes ----------------------------------------------

def _small_geometry(index: int):
    """A distinct tiny layer per index (cheap to time: every candidate runs in microseconds)."""
    return make_geometry((1, 2, 4 + index % 7, 4 + index // 7), (2, 2, 1 + index % 2, 1))


def _entries(cache_dir):
    return json.loads((cache_dir / "tune.json").read_text())["entries"]


def test_threads_keep_every_entry(cache_dir):
    threads_count, per_thread = 8, 3
    barrier = threading.Barrier(threads_count)
    errors = []

    def work(t):
        try:
            barrier.wait()
            for i in range(per_thread):
                tuning.choose("forward", _small_geometry(t * per_thread + i), DEVICE, torch.float32)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(threads_count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(_entries(cache_dir)) == threads_count * per_thread


def test_threads_writing_at_once_keep_every_entry(cache_dir):
    """The race itself, without the timing in between: many writers merging into one file."""
    threads_count, per_thread = 8, 25
    barrier = threading.Barrier(threads_count)
    path = tuning.cache_path()

    def work(t):
        barrier.wait()
        for i in range(per_thread):
            tuning._write_entry(path, f"key {t} {i}", {"algo": "im2col", "ms": {}})

    threads = [threading.Thread(target=work, args=(t,)) for t in range(threads_count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(_entries(cache_dir)) == threads_count * per_thread


def _tune_in_a_process(index: int, per_process: int, barrier, direct_writes: int) -> None:
    """Runs in a spawned process: tune its own shapes, then write entries as fast as it can."""
    barrier.wait()
    for i in range(per_process):
        tuning.choose("forward", _small_geometry(index * per_process + i), torch.device("cpu"), torch.float32)
    for i in range(direct_writes):
        tuning._write_entry(tuning.cache_path(), f"direct {index} {i}", {"algo": "im2col", "ms": {}})


def test_processes_keep_every_entry(cache_dir):
    processes_count, per_process, direct_writes = 4, 12, 30
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes_count)
    workers = [context.Process(target=_tune_in_a_process, args=(i, per_process, barrier, direct_writes))
               for i in range(processes_count)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=240)
    assert [w.exitcode for w in workers] == [0] * processes_count
    entries = _entries(cache_dir)
    assert len(entries) == processes_count * (per_process + direct_writes)
    assert sum(key.startswith("direct ") for key in entries) == processes_count * direct_writes


@contextlib.contextmanager
def _deadline(seconds: int):
    """Fail instead of hanging: SIGALRM interrupts a blocking open()."""
    def expired(signum, frame):
        raise TimeoutError(f"blocked for more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are a POSIX feature")
@pytest.mark.parametrize("name", ["tune.json", "tune.json.lock"])
def test_a_fifo_in_place_of_the_cache_never_blocks(cache_dir, name):
    os.mkfifo(cache_dir / name)
    g = _geometry(LAYERS[0])
    with _deadline(60), pytest.warns(RuntimeWarning, match="not a regular file"):
        first = tuning.choose("forward", g, DEVICE, torch.float32)
        assert tuning.lookup("forward", _geometry(LAYERS[1]), DEVICE, torch.float32) is None
    assert first in REGISTRY
    assert stat.S_ISFIFO(os.stat(cache_dir / name).st_mode)  # left as it was
    with _deadline(60):
        assert corrmm.corr2d(torch.randn(2, 6, 9, 8), torch.randn(4, 6, 1, 1), algo="tune").shape == (2, 4, 9, 8)


_CRASH_MID_WRITE = """
import json, os, torch
from corrmm import tuning
real_dump = json.dump
def dump_half_then_die(payload, f, **kwargs):
    text = json.dumps(payload, **kwargs)
    f.write(text[: len(text) // 2])
    f.flush()
    os._exit(9)  # killed mid-write: no cleanup, no exception handlers
json.dump = dump_half_then_die
tuning._write_entry(tuning.cache_path(), "the crashing write", {"algo": "im2col", "ms": {}})
"""


def test_a_crash_mid_write_leaves_the_previous_file(cache_dir):
    g = _geometry(LAYERS[0])
    first = tuning.choose("forward", g, DEVICE, torch.float32)
    before = (cache_dir / "tune.json").read_text()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    result = subprocess.run([sys.executable, "-c", _CRASH_MID_WRITE], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 9, result.stderr
    assert (cache_dir / "tune.json").read_text() == before  # still the whole previous file: valid JSON
    tuning.clear_cache()
    assert tuning.choose("forward", g, DEVICE, torch.float32) == first  # read back from it
    tuning.choose("grad_input", g, DEVICE, torch.float32)  # and the next writer is not stuck on a lock
    assert len(_entries(cache_dir)) == 2
