"""Convolution blocks by name. Importing this package registers every block module."""

# Each module registers its blocks on import: 3x3, 5x5, 1x5 (plain) and one block per other module.
from lk_segment.blocks import dilated, dws, gcn, grouped, interp, plain, replk  # noqa: F401
from lk_segment.blocks.registry import create_block, get_block_class, list_blocks, register_block

__all__ = ["create_block", "get_block_class", "list_blocks", "register_block"]
