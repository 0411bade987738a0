"""Benchmark suites: 2-D convolution layers read from CSV files.

A suite is a CSV file whose header names its columns::

    name,batch,channels,height,width,filters,kernel_h,kernel_w,stride,pad

and may add ``dilation`` and ``groups`` (default 1). ``stride``, ``pad`` and
``dilation`` are single ints applied to both spatial dimensions, as in the
convnet-benchmarks tables. Blank lines and lines starting with ``#`` are skipped.

Shipped suites (``corrmm/bench/suites/``):

    convnet     the 12 layers of DESIGN section 5 (L1-L5, S1, S2, R1-R5), GPU-sized
    cpu-small   the CPU layers of issue 12 (3x3, 7x7, strided, depthwise) and the demo's strided layer
"""
from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from ..geometry import ConvGeometry, make_geometry

BUILTIN_SUITES = {"convnet": "convnet.csv", "cpu-small": "cpu_small.csv"}
REQUIRED_COLUMNS = ("name", "batch", "channels", "height", "width", "filters", "kernel_h", "kernel_w",
                    "stride", "pad")
OPTIONAL_COLUMNS = {"dilation": 1, "groups": 1}


@dataclass(frozen=True)
class Layer:
    """One correlation problem: input (batch, channels, height, width), weight (filters, channels/groups, kh, kw)."""

    name: str
    batch: int
    channels: int
    height: int
    width: int
    filters: int
    kernel_h: int
    kernel_w: int
    stride: int = 1
    pad: int = 0
    dilation: int = 1
    groups: int = 1

    @property
    def input_shape(self) -> Tuple[int, int, int, int]:
        return (self.batch, self.channels, self.height, self.width)

    @property
    def weight_shape(self) -> Tuple[int, int, int, int]:
        return (self.filters, self.channels // self.groups, self.kernel_h, self.kernel_w)

    @property
    def geometry(self) -> ConvGeometry:
        return make_geometry(self.input_shape, self.weight_shape, self.pad, self.stride, self.dilation,
                             self.groups)

    @property
    def flops(self) -> int:
        """The direct method's count, 2·N·K·P·Q·(C/groups)·R·S, the same for all three passes."""
        return self.geometry.flops

    def describe(self) -> str:
        """A short label in the style of the DESIGN table: ``64x56x56 k3 ->64 bs64 p1``."""
        kernel = f"k{self.kernel_h}" if self.kernel_h == self.kernel_w else f"k{self.kernel_h}x{self.kernel_w}"
        extras = "".join(f" {tag}{value}" for tag, value, default in
                         (("s", self.stride, 1), ("p", self.pad, 0), ("d", self.dilation, 1),
                          ("g", self.groups, 1)) if value != default)
        return (f"{self.channels}x{self.height}x{self.width} {kernel} ->{self.filters} "
                f"bs{self.batch}{extras}")

    def to_dict(self) -> dict:
        return {**asdict(self), "gflop": self.flops / 1e9, "output_shape": list(self.geometry.output_shape)}


def _parse_rows(text: str, source: str) -> List[Layer]:
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    reader = csv.DictReader(io.StringIO("\n".join(lines)))
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    unknown = [c for c in header if c not in REQUIRED_COLUMNS and c not in OPTIONAL_COLUMNS]
    if missing or unknown:
        raise ValueError(f"{source}: bad header {header}: missing columns {missing}, unknown columns {unknown}; "
                         f"expected {list(REQUIRED_COLUMNS)} plus optionally {list(OPTIONAL_COLUMNS)}")
    layers, seen = [], set()
    for number, raw in enumerate(reader, start=2):
        row = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        values = {}
        for column in header:
            if column == "name":
                continue
            text_value = row.get(column, "")
            if text_value == "" and column in OPTIONAL_COLUMNS:
                values[column] = OPTIONAL_COLUMNS[column]
                continue
            try:
                values[column] = int(text_value)
            except ValueError:
                raise ValueError(f"{source}, row {number}: column {column!r} must be an int, got {text_value!r}") \
                    from None
        name = row["name"]
        if not name or name in seen:
            raise ValueError(f"{source}, row {number}: layer names must be non-empty and unique, got {name!r}")
        seen.add(name)
        layer = Layer(name=name, **values)
        try:
            layer.geometry  # validates channels, groups and the output size now, not mid-benchmark
        except ValueError as err:
            raise ValueError(f"{source}, row {number} ({name}): {err}") from None
        layers.append(layer)
    if not layers:
        raise ValueError(f"{source}: no layers")
    return layers


def load_suite(spec: str) -> Tuple[str, List[Layer]]:
    """A shipped suite by name (``convnet``, ``cpu-small``) or a CSV file by path; returns (label, layers)."""
    if spec in BUILTIN_SUITES:
        text = resources.files(__package__).joinpath("suites", BUILTIN_SUITES[spec]).read_text()
        return spec, _parse_rows(text, spec)
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"unknown suite {spec!r}: expected one of {list(BUILTIN_SUITES)} or a path to a CSV file")
    return str(path), _parse_rows(path.read_text(), str(path))


def select_layers(layers: Sequence[Layer], names: Optional[Sequence[str]]) -> List[Layer]:
    """The layers named in ``names`` (in suite order), or all of them when ``names`` is empty."""
    if not names:
        return list(layers)
    known = [layer.name for layer in layers]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown layers {unknown}: this suite has {known}")
    wanted = set(names)
    return [layer for layer in layers if layer.name in wanted]
