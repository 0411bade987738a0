"""3x3 stride-1 depthwise correlation on the CPU: a direct kernel compiled by numba, NCHW, vectorised along rows.

Filter k = c·M + m reads input channel c only (M = K / C filters per channel).
With x (N, C, H, W), w (K, 3, 3) and y (N, K, P, Q), at stride 1 without dilation::

    y[n, k, p, q] = Σ_{r, s < 3} w[k, r, s] · x[n, c, p + r - ph, q + s - pw]

Each thread takes one (image, channel) plane at a time, copies it once into a
zero-bordered scratch plane (so the inner loop has no bounds tests), and writes
each output element once as the nine-term sum of its taps, read from three
rows of the scratch plane: the loop along an output row is a single expression
of loads and multiply-adds that LLVM vectorises (a form that accumulates tap by
tap into memory does not vectorise and runs 3x slower). No fast-math: the nine
products are added in the order written, so results are deterministic and
independent of the thread count.

The input gradient of a layer with one filter per channel is the same
kernel applied to dy with the kernel rotated 180° and the padding ``2 - p``
(see :mod:`corrmm.algorithms.depthwise`).

Compiled on first use per dtype (float32, float64) and cached on disk
(``cache=True``).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True, fastmath=False)
def forward_3x3(x, w, y, ph, pw):
    """y (N, K, P, Q) = the stride-1, undilated correlation of x (N, C, H, W) with w (K, 3, 3), padded by
    (ph, pw) before (the high padding is whatever makes the output size)."""
    n_images, channels, height, width = x.shape
    filters = w.shape[0]
    multiplier = filters // channels
    rows, cols = y.shape[2], y.shape[3]
    # the scratch plane holds every position the taps read, padding included
    plane_h = max(ph + height, rows + 2)
    plane_w = max(pw + width, cols + 2)
    for job in prange(n_images * channels):
        n = job // channels
        c = job % channels
        plane = np.zeros((plane_h, plane_w), dtype=x.dtype)
        plane[ph:ph + height, pw:pw + width] = x[n, c]
        for m in range(multiplier):
            k = c * multiplier + m
            w00, w01, w02 = w[k, 0, 0], w[k, 0, 1], w[k, 0, 2]
            w10, w11, w12 = w[k, 1, 0], w[k, 1, 1], w[k, 1, 2]
            w20, w21, w22 = w[k, 2, 0], w[k, 2, 1], w[k, 2, 2]
            for p in range(rows):
                top = plane[p]
                mid = plane[p + 1]
                bot = plane[p + 2]
                out = y[n, k, p]
                for q in range(cols):
                    out[q] = (w00 * top[q] + w01 * top[q + 1] + w02 * top[q + 2]
                              + w10 * mid[q] + w11 * mid[q + 1] + w12 * mid[q + 2]
                              + w20 * bot[q] + w21 * bot[q + 1] + w22 * bot[q + 2])
