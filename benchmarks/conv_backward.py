"""Why training the unfrozen top bounds a grid search on the CPU: convolution backward
passes against their forward passes, at the shapes of EfficientNet-Lite0's upper blocks.

A search with ``memory=`` computes the frozen bottom once, so what is left of each fit is
training the unfrozen top; ``grid_search.py``'s speed-up is bounded by that share. This
script times, on one thread, the forward and the forward + backward of the
convolutions of the top half of ``tf_efficientnet_lite0`` at 96 px (batch 32,
channels-last, oneDNN): pointwise (1x1) convolutions and depthwise 3x3 and 5x5 ones,
and the weight-gradient-free backward (input gradient only) of the depthwise ones.
It prints a table; there is no target (a measurement of PyTorch, not of sktransfer).

    python benchmarks/conv_backward.py
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

SHAPES = [  # (name, channels in, spatial size, kernel, channels out or None for depthwise)
    ("pointwise 192->1152 @3x3", 192, 3, 1, 1152),
    ("pointwise 112->672 @6x6", 112, 6, 1, 672),
    ("depthwise 3x3, 480 @6x6", 480, 6, 3, None),
    ("depthwise 5x5, 672 @6x6", 672, 6, 5, None),
    ("depthwise 5x5, 1152 @3x3", 1152, 3, 5, None),
]


def best_ms(fn, repeats=10) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1000


def main() -> None:
    torch.set_num_threads(1)
    print("| convolution (batch 32) | forward ms | forward + backward ms | input grad only ms |")
    print("|---|---|---|---|")
    for name, c_in, size, k, c_out in SHAPES:
        forward, both, input_grad_only = convolution(c_in, size, k, c_out)
        print(
            f"| {name} | {best_ms(forward):.2f} | {best_ms(both):.2f} | "
            f"{best_ms(input_grad_only):.2f} |"
        )


def convolution(c_in, size, k, c_out):
    """Three timed calls: forward, forward + backward, and forward + input gradient."""
    x = torch.randn(32, c_in, size, size).contiguous(memory_format=torch.channels_last)
    groups = c_in if c_out is None else 1
    w = torch.randn(c_in if c_out is None else c_out, 1 if c_out is None else c_in, k, k)
    x.requires_grad_()
    w.requires_grad_()

    def forward():
        with torch.no_grad():
            F.conv2d(x, w, padding=k // 2, groups=groups)

    def both(weight=w):
        F.conv2d(x, weight, padding=k // 2, groups=groups).sum().backward()

    def input_grad_only():
        both(w.detach())

    return forward, both, input_grad_only


if __name__ == "__main__":
    main()
