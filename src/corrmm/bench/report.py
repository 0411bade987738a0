"""Reading a list of measurements: the table, the suite summary, the JSON file and the plot.

For each (dtype, layer, pass):

    best        the fastest registered algorithm whose result was right (``auto`` and
                ``tune`` only pick among those, so they count only when no algorithm
                was timed, e.g. under ``--algos auto,torch``)
    speedup     torch's time over ours: above 1 means faster than torch
    auto/best   auto's time over best's: 1.0 means the rule picked the winner

Over the suite, speedups are summarised by their geometric mean (a ratio's
natural average: 2x on one layer and 0.5x on another give 1x).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from .runner import CHOOSERS, TORCH, Measurement
from .suite import Layer

PASS_LABELS = {"forward": "fwd", "grad_input": "grad_in", "grad_weight": "grad_w"}


@dataclass
class Row:
    """The derived numbers of one (dtype, layer, pass)."""

    dtype: str
    layer: Layer
    pass_name: str
    by_algo: Dict[str, Measurement]
    best: Optional[Measurement]

    def ms(self, algo: str) -> Optional[float]:
        m = self.by_algo.get(algo)
        return m.ms if m is not None and m.status == "ok" else None

    def speedup(self, algo: str) -> Optional[float]:
        """torch's time over ``algo``'s (``best`` allowed)."""
        torch_ms = self.ms(TORCH)
        ours = self.best.ms if algo == "best" and self.best is not None else self.ms(algo)
        if torch_ms is None or ours is None or ours <= 0:
            return None
        return torch_ms / ours

    @property
    def auto_over_best(self) -> Optional[float]:
        auto = self.ms("auto")
        if auto is None or self.best is None or not self.best.ms:
            return None
        return auto / self.best.ms

    def to_json(self) -> dict:
        return {
            "dtype": self.dtype, "layer": self.layer.name, "pass": self.pass_name,
            "best_algo": self.best.algo if self.best else None,
            "best_ms": self.best.ms if self.best else None,
            "best_tflops": self.best.tflops if self.best else None,
            "torch_ms": self.ms(TORCH),
            "speedup_best": self.speedup("best"), "speedup_auto": self.speedup("auto"),
            "speedup_tune": self.speedup("tune"), "auto_over_best": self.auto_over_best,
        }


def build_rows(measurements: Sequence[Measurement], layers: Sequence[Layer], dtypes: Sequence[str],
               passes: Sequence[str]) -> List[Row]:
    """One Row per (dtype, pass, layer) that has measurements, ordered pass by pass."""
    index: Dict[Tuple[str, str, str], Dict[str, Measurement]] = {}
    for m in measurements:
        index.setdefault((m.dtype, m.layer, m.pass_name), {})[m.algo] = m
    rows = []
    for dtype in dtypes:
        for pass_name in passes:
            for layer in layers:
                by_algo = index.get((dtype, layer.name, pass_name))
                if by_algo:
                    rows.append(Row(dtype, layer, pass_name, by_algo, _best(by_algo)))
    return rows


def _best(by_algo: Dict[str, Measurement]) -> Optional[Measurement]:
    def fastest(names):
        timed = [by_algo[n] for n in names if by_algo[n].status == "ok"]
        return min(timed, key=lambda m: m.ms) if timed else None

    registered = [n for n in by_algo if n != TORCH and n not in CHOOSERS]
    return fastest(registered) or fastest([n for n in by_algo if n in CHOOSERS])


def geomean(values: Sequence[float]) -> Optional[float]:
    values = [v for v in values if v is not None and v > 0]
    if not values:
        return None
    return math.exp(sum(math.log(v) for v in values) / len(values))


def summarize(rows: Sequence[Row], dtype: str, passes: Sequence[str]) -> Dict[str, dict]:
    """Per pass: geometric-mean speedups over torch (best, auto, tune) and the worst auto/best ratio."""
    summary = {}
    for pass_name in passes:
        selected = [r for r in rows if r.dtype == dtype and r.pass_name == pass_name]
        if not selected:
            continue
        ratios = [(r.auto_over_best, r.layer.name) for r in selected if r.auto_over_best is not None]
        worst = max(ratios) if ratios else (None, None)
        summary[pass_name] = {
            "layers": len(selected),
            "geomean_speedup_best": geomean([r.speedup("best") for r in selected]),
            "geomean_speedup_auto": geomean([r.speedup("auto") for r in selected]),
            "geomean_speedup_tune": geomean([r.speedup("tune") for r in selected]),
            "worst_auto_over_best": worst[0],
            "worst_auto_over_best_layer": worst[1],
        }
    return summary


# ---- the text table ---------------------------------------------------------------

def _fmt_number(value: Optional[float]) -> str:
    """Three significant figures or so, "-" for a missing value (times in ms, rates in TFLOP/s)."""
    if value is None:
        return "-"
    for floor, digits in ((100, 0), (10, 1), (1, 2)):
        if value >= floor:
            return f"{value:.{digits}f}"
    return f"{value:.3f}"


def _fmt_ratio(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}x"


CELL = 15  # "   ms  TF/s" per candidate


def _cell(m: Optional[Measurement]) -> str:
    if m is None:
        return "-".rjust(CELL)
    if m.ms is None:
        return m.status.rjust(CELL)
    mark = "!" if m.status == "wrong" else ""  # timed, but the result is wrong
    return f"{_fmt_number(m.ms) + mark:>8} {_fmt_number(m.tflops):>6}"


def format_table(rows: Sequence[Row], dtype: str, candidates: Sequence[str], torch_label: str) -> str:
    """The table of one dtype: a line per (pass, layer), ms and TFLOP/s per candidate."""
    ours = [c for c in candidates if c != TORCH]
    header1 = ["layer", "pass", "GFLOP", *ours, "best", "", torch_label, "best/torch", "auto/torch"]
    header2 = ["", "", "", *(["ms   TF/s"] * len(ours)), "ms   TF/s", "algo", "ms   TF/s", "", ""]
    body = []
    previous_pass = None
    for row in (r for r in rows if r.dtype == dtype):
        if previous_pass is not None and row.pass_name != previous_pass:
            body.append(None)  # a rule between passes
        previous_pass = row.pass_name
        body.append([
            row.layer.name, PASS_LABELS.get(row.pass_name, row.pass_name), f"{row.layer.flops / 1e9:.2f}",
            *(_cell(row.by_algo.get(c)) for c in ours),
            _cell(row.best), row.best.algo if row.best else "-",
            _cell(row.by_algo.get(TORCH)), _fmt_ratio(row.speedup("best")), _fmt_ratio(row.speedup("auto")),
        ])
    lines_in = [header1, header2, *[b for b in body if b is not None]]
    widths = [max(len(line[i]) for line in lines_in) for i in range(len(header1))]
    left = {0, 1, len(ours) + 4}  # text columns: layer, pass, best algo

    def render(cells):
        return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    rule = "-" * len(render(header1))
    out = [render(header1), render(header2), rule]
    out += [rule if b is None else render(b) for b in body]
    return "\n".join(line.rstrip() for line in out)


def format_summary(summary: Dict[str, dict], torch_label: str) -> str:
    lines = [f"geometric mean speedup over {torch_label} (above 1: corrmm faster), and auto's worst ratio to best:"]
    for pass_name, s in summary.items():
        worst = s["worst_auto_over_best"]
        worst_text = "-" if worst is None else f"{worst:.2f} ({s['worst_auto_over_best_layer']})"
        tune = s["geomean_speedup_tune"]
        tune_text = f"   tune {_fmt_ratio(tune)}" if tune is not None else ""
        lines.append(f"  {pass_name:12s} best {_fmt_ratio(s['geomean_speedup_best']):>7}   "
                     f"auto {_fmt_ratio(s['geomean_speedup_auto']):>7}{tune_text}   "
                     f"worst auto/best {worst_text}   [{s['layers']} layers]")
    return "\n".join(lines)


def format_problems(measurements: Sequence[Measurement]) -> str:
    """Every wrong result and every error, with its message: these are bugs, not limits."""
    bad = [m for m in measurements if m.status in ("wrong", "error")]
    if not bad:
        return ""
    lines = [f"{len(bad)} problem(s):"]
    for m in bad:
        lines.append(f"  {m.dtype} {m.layer} {m.pass_name} {m.algo}: {m.status}: {m.detail}")
    return "\n".join(lines)


# ---- JSON -------------------------------------------------------------------------

def to_json(environment: dict, settings: dict, runs: List[dict], layers: Sequence[Layer],
            measurements: Sequence[Measurement], rows: Sequence[Row]) -> dict:
    return {
        **environment,
        "settings": settings,
        "runs": runs,
        "layers": [layer.to_dict() for layer in layers],
        "measurements": [m.to_json() for m in measurements],
        "rows": [r.to_json() for r in rows],
    }


def _finite(value):
    """NaN and infinities become null: strict JSON has no spelling for them (a NaN error marks a wrong result)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_json(path: str, document: dict) -> None:
    with open(path, "w") as fh:
        json.dump(_finite(document), fh, indent=1, allow_nan=False, default=str)
        fh.write("\n")


# ---- the plot ---------------------------------------------------------------------

def write_plot(path: str, rows: Sequence[Row], dtypes: Sequence[str], passes: Sequence[str],
               candidates: Sequence[str], title: str) -> None:
    """One panel per (dtype, pass): speedup over torch per layer, a marker per algorithm, a bar for best.

    Drawn on an Agg canvas owned by this figure, so no global matplotlib backend is touched.
    Where torch was not timed, the panel shows TFLOP/s instead.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    series = [c for c in candidates if c != TORCH]
    markers = "os^vD<>ph*"
    fig = Figure(figsize=(5.0 * len(passes), 3.6 * len(dtypes)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(dtypes), len(passes), squeeze=False)
    handles = {}
    for i, dtype in enumerate(dtypes):
        for j, pass_name in enumerate(passes):
            ax = axes[i][j]
            panel = [r for r in rows if r.dtype == dtype and r.pass_name == pass_name]
            if not panel:
                ax.set_visible(False)
                continue
            relative = any(r.ms(TORCH) is not None for r in panel)

            def value(row: Row, algo: str) -> Optional[float]:
                if relative:
                    return row.speedup(algo)
                m = row.best if algo == "best" else row.by_algo.get(algo)
                return m.tflops if m is not None and m.status == "ok" else None

            xs = range(len(panel))
            best = [value(r, "best") for r in panel]
            handles["best"] = ax.bar([x for x, v in zip(xs, best) if v is not None],
                                     [v for v in best if v is not None], color="0.85", width=0.7, label="best")
            for k, algo in enumerate(series):
                points = [(x, value(r, algo)) for x, r in zip(xs, panel) if value(r, algo) is not None]
                if not points:
                    continue
                style = dict(marker="x", color="black", s=60, zorder=4) if algo == "auto" else \
                    dict(marker=markers[k % len(markers)], s=28, zorder=3, alpha=0.85)
                handles[algo] = ax.scatter([p[0] for p in points], [p[1] for p in points], label=algo, **style)
            if relative:
                ax.axhline(1.0, color="0.3", linestyle="--", linewidth=0.8)
                ax.set_yscale("log")
                ax.set_ylabel("speedup over torch (x)")
            else:
                ax.set_ylabel("TFLOP/s")
            ax.set_xticks(list(xs), [r.layer.name for r in panel])
            ax.set_title(f"{dtype} {pass_name}")
            ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title)
    if handles:
        legend = dict(ncol=min(len(handles), 9), frameon=False)
        try:  # the "outside" placement needs matplotlib >= 3.7
            fig.legend(list(handles.values()), list(handles), loc="outside lower center", **legend)
        except ValueError:
            fig.legend(list(handles.values()), list(handles), loc="lower center", **legend)
    fig.savefig(path, dpi=110)
