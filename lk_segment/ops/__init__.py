"""Alternative implementations of operations whose native PyTorch kernels are slow."""

from lk_segment.ops.dwconv import (
    DW_IMPLS,
    DepthwiseConv2d,
    choose_dw_impl,
    fft_depthwise_conv2d,
    memory_format_of,
    native_depthwise,
)

__all__ = ["DW_IMPLS", "DepthwiseConv2d", "choose_dw_impl", "fft_depthwise_conv2d", "memory_format_of",
           "native_depthwise"]
