"""Which matrix instructions each compiled weight-gradient kernel uses (read from Triton's cache).

    TRITON_CACHE_DIR=/tmp/tc ...; python scripts/triton_cache_report.py /tmp/tc

For every cached ``implicit_grad_weight_kernel``: operand type, wgmma or not
(``warp_group_dot`` in the TTGIR), whether an operand went through registers
(a ``convert_layout`` into a dot-operand layout), the shared-memory orders of the
operands, and the HGMMA / HMMA count in the SASS (``cuobjdump``, when present).
"""
import collections
import glob
import os
import re
import shutil
import subprocess
import sys

def loop_summary(sass: str) -> str:
    """Instructions in the loop that holds the HGMMAs (the backward branch around them) and the most common."""
    ops = []
    for m in re.finditer(r"/\*([0-9a-f]{4,5})\*/\s+(@!?U?P\w+\s+)?([A-Z0-9_]+)[^;]*?(0x[0-9a-f]+)?\s*;", sass):
        ops.append((int(m.group(1), 16), m.group(3), int(m.group(4), 16) if m.group(4) else None))
    hgmma = [a for a, op, _ in ops if op == "HGMMA"]
    for address, op, target in ops:
        if op == "BRA" and target is not None and hgmma and target <= hgmma[0] < address:
            body = [o for a, o, _ in ops if target <= a <= address]
            top = collections.Counter(body).most_common(8)
            return f"{len(body)} instr " + " ".join(f"{o}:{n}" for o, n in top)
    return "not found"


root = sys.argv[1] if len(sys.argv) > 1 else os.path.expanduser("~/.triton/cache")
cuobjdump = shutil.which("cuobjdump")
for ttgir in sorted(glob.glob(os.path.join(root, "*", "implicit_grad_weight_kernel.ttgir"))):
    text = open(ttgir).read()
    dot = "warp_group_dot" in text
    operands = re.findall(r"memdesc<(\d+x\d+x[a-z0-9]+)", text)[:2] if dot else re.findall(r"tt\.dot .*", text)[:1]
    through_registers = len(re.findall(r"convert_layout .*dot_op", text))
    pixels = "PIXELS_INNER" if "memdesc_trans" in text else ""
    shared = sorted(set(re.findall(r"nvmma_shared<\{[^}]*transposed = (\w+), elementBitWidth = (\d+)", text)))
    line = (f"{os.path.basename(os.path.dirname(ttgir))[:10]} wgmma={'yes' if dot else 'NO'} "
            f"operands={operands} to_registers={through_registers} shared={shared} {pixels}")
    layouts = sorted(set(re.findall(r"sizePerThread = (\[\d+, \d+\]), threadsPerWarp = (\[\d+, \d+\]), "
                                    r"warpsPerCTA = \[\d+, \d+\], order = (\[\d+, \d+\])", text)))
    line += " blocked=" + ";".join("/".join(t) for t in layouts)
    cubin = ttgir[:-len(".ttgir")] + ".cubin"
    if cuobjdump and os.path.exists(cubin):
        sass = subprocess.run([cuobjdump, "-sass", cubin], capture_output=True, text=True).stdout
        line += f" HGMMA={sass.count('HGMMA')} HMMA={len(re.findall(r'HMMA', sass))} STL={sass.count('STL')}"
        line += " loop: " + loop_summary(sass)
    print(line)
