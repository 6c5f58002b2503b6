"""Convolution blocks by name. Importing this package registers every block module."""

from lk_segment.blocks import plain  # noqa: F401  (registers 3x3, 5x5, 1x5)
from lk_segment.blocks.registry import create_block, get_block_class, list_blocks, register_block

__all__ = ["create_block", "get_block_class", "list_blocks", "register_block"]
