"""Convolution blocks by name. Importing this package imports every module in it, which
registers its blocks: a new module here needs no line anywhere else."""

import importlib
import pkgutil

from lk_segment.blocks.registry import create_block, get_block_class, list_blocks, register_block

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["create_block", "get_block_class", "list_blocks", "register_block"]
