"""Markdown tables for PERFORMANCE.md from `corrmm bench --json` files.

    python scripts/perf_tables.py benchmarks/results/h100-eager-v5-bf16-2026-11-24.json [...]

One table per dtype in the files: per layer and pass, the best corrmm algorithm,
its TFLOP/s, cuDNN's, best/cuDNN and auto/cuDNN with auto's pick; then the
geometric means per pass.
"""
import json
import sys

PASSES = ("forward", "grad_input", "grad_weight")


def fmt(value, digits=0):
    return "-" if value is None else f"{value:.{digits}f}"


def tables(document: dict) -> str:
    gflop = {layer["name"]: layer["gflop"] for layer in document["layers"]}
    picks = {(m["dtype"], m["layer"], m["pass"]): m.get("choice") for m in document["measurements"]
             if m["algo"] == "auto"}
    out = []
    for run in document["runs"]:
        dtype = run["dtype"]
        rows = {(r["layer"], r["pass"]): r for r in document["rows"] if r["dtype"] == dtype}
        head = "| layer | " + " | ".join(f"{p} best | TF/s | cuDNN | best/cuDNN | auto/cuDNN" for p in PASSES) + " |"
        out += [f"**{dtype}**", "", head, "|---" * (1 + 5 * len(PASSES)) + "|"]
        for layer in gflop:
            cells = [layer]
            for p in PASSES:
                r = rows.get((layer, p))
                if r is None:
                    cells += ["-"] * 5
                    continue
                torch_tflops = gflop[layer] / r["torch_ms"] if r.get("torch_ms") else None
                pick = picks.get((dtype, layer, p))
                auto = f"{fmt(r.get('speedup_auto'), 2)}x" + (f" ({pick})" if pick else "")
                cells += [r["best_algo"], fmt(r.get("best_tflops")), fmt(torch_tflops),
                          f"{fmt(r.get('speedup_best'), 2)}x", auto]
            out.append("| " + " | ".join(cells) + " |")
        summary = run["summary"]
        out += ["", "geometric means (best / auto over cuDNN): " + "; ".join(
            f"{p} {summary[p]['geomean_speedup_best']:.2f}x / {summary[p]['geomean_speedup_auto']:.2f}x"
            for p in PASSES if p in summary), ""]
    return "\n".join(out)


if __name__ == "__main__":
    for path in sys.argv[1:]:
        with open(path) as f:
            print(tables(json.load(f)))
