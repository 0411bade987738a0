"""Which matrix instructions each compiled weight-gradient kernel uses (read from Triton's cache).

    TRITON_CACHE_DIR=/tmp/tc ...; python scripts/triton_cache_report.py /tmp/tc

For every cached ``implicit_grad_weight_kernel``: operand type, wgmma or not
(``warp_group_dot`` in the TTGIR), whether an operand went through registers
(a ``convert_layout`` into a dot-operand layout), the shared-memory orders of the
operands, and the HGMMA / HMMA count in the SASS (``cuobjdump``, when present).
"""
import glob
import os
import re
import shutil
import subprocess
import sys

root = sys.argv[1] if len(sys.argv) > 1 else os.path.expanduser("~/.triton/cache")
cuobjdump = shutil.which("cuobjdump")
for ttgir in sorted(glob.glob(os.path.join(root, "*", "implicit_grad_weight_kernel.ttgir"))):
    text = open(ttgir).read()
    dot = re.search(r"warp_group_dot %\S+, %\S+, %\S+ \{[^}]*\} : (\S+) \* (\S+)", text)
    operands = dot.groups() if dot else re.findall(r"tt\.dot .*", text)[:1]
    through_registers = len(re.findall(r"convert_layout .*dot_op", text))
    pixels = "PIXELS_INNER" if "memdesc_trans" in text else ""
    shared = sorted(set(re.findall(r"nvmma_shared<\{[^}]*transposed = (\w+), elementBitWidth = (\d+)", text)))
    line = (f"{os.path.basename(os.path.dirname(ttgir))[:10]} wgmma={'yes' if dot else 'NO'} "
            f"operands={operands} to_registers={through_registers} shared={shared} {pixels}")
    cubin = ttgir[:-len(".ttgir")] + ".cubin"
    if cuobjdump and os.path.exists(cubin):
        sass = subprocess.run([cuobjdump, "-sass", cubin], capture_output=True, text=True).stdout
        line += f" HGMMA={sass.count('HGMMA')} HMMA={len(re.findall(r'HMMA', sass))} spills={sass.count('STL')}"
    print(line)
