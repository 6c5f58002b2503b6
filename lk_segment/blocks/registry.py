"""A registry of convolution blocks, one string name per kernel variant.

Every block has the same signature, ``Block(in_chs, out_chs, *, kernel_size, norm_layer,
act_layer, **options)``, keeps the spatial size, and provides what ``blocks/contract.py``
names (``description``, ``params_formula``, ``rf_extent``). Adding a variant is one module in
``lk_segment/blocks/`` with a class decorated with ``@register_block("name")`` plus one file
in ``configs/variant/`` (README, "Adding a variant").
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from lk_segment.blocks.contract import check_block, check_block_class
from lk_segment.errors import UserError

_BLOCKS: dict[str, type[nn.Module]] = {}


def register_block(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make ``cls`` available to ``create_block(name, ...)``.

    Refuses a duplicate name, and a class without a description or a readable params_formula.
    """

    def decorator(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _BLOCKS:
            raise ValueError(f"block {name!r} is already registered by {_BLOCKS[name].__name__}")
        check_block_class(name, cls)
        cls.block_name = name
        _BLOCKS[name] = cls
        return cls

    return decorator


def list_blocks() -> list[str]:
    return sorted(_BLOCKS)


def get_block_class(name: str) -> type[nn.Module]:
    if name not in _BLOCKS:
        raise UserError(f"unknown variant {name!r}: choose one of {', '.join(list_blocks())}")
    return _BLOCKS[name]


def create_block(name: str, in_chs: int, out_chs: int, **options) -> nn.Module:
    """Build block ``name``; an option the block does not take is named in the error."""
    cls = get_block_class(name)
    try:
        block = cls(in_chs, out_chs, **options)
    except TypeError as exc:
        raise UserError(f"block {name!r} rejected its options {sorted(options)}: {exc}") from exc
    check_block(name, block)
    return block
