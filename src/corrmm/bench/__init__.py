"""The benchmark behind ``corrmm bench``: suites of layers, timing, reports.

    suite.py    layers read from CSV files (shipped: ``suites/convnet.csv``, ``cpu_small.csv``, ``models.csv``)
    timing.py   the median time of a callable (CUDA events on a GPU, perf_counter on the CPU)
    runner.py   every candidate (algorithms, auto, tune, torch) on every layer, pass and dtype
    report.py   the table, the suite summary, the JSON document and the plot
    models.py   ``--models``: training steps of whole networks, corrmm against torch, eager and compiled
    networks.py the two networks built in for it (a 1-D audio CNN and a small 2-D CNN)
"""
from .runner import DTYPES, PASSES, BenchPlan, Measurement, run
from .suite import Layer, load_suite, select_layers
from .timing import TimingConfig, measure

__all__ = ["DTYPES", "PASSES", "BenchPlan", "Measurement", "run", "Layer", "load_suite", "select_layers",
           "TimingConfig", "measure"]
