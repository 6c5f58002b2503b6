"""A registry of convolution blocks, one string name per kernel variant.

Every block has the same signature, ``Block(in_chs, out_chs, *, kernel_size, norm_layer,
act_layer, **options)``, keeps the spatial size, and says how far it sees through
``rf_extent`` (the side of the square its output pixel depends on). Adding a variant is one
class decorated with ``@register_block("name")`` plus one file in ``configs/variant/``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from lk_segment.errors import UserError

_BLOCKS: dict[str, type[nn.Module]] = {}


def register_block(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make ``cls`` available to ``create_block(name, ...)``."""

    def decorator(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _BLOCKS:
            raise ValueError(f"block {name!r} is already registered by {_BLOCKS[name].__name__}")
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
        return cls(in_chs, out_chs, **options)
    except TypeError as exc:
        raise UserError(f"block {name!r} rejected its options {sorted(options)}: {exc}") from exc


def same_padding(kernel_size: tuple[int, int], dilation: tuple[int, int] = (1, 1)) -> tuple[int, int]:
    """Padding that keeps the spatial size at stride 1, per axis: a (1, 5) kernel gets (0, 2)."""
    return tuple(d * (k - 1) // 2 for k, d in zip(kernel_size, dilation, strict=True))  # type: ignore[return-value]


def conv_bn_act(in_chs: int, out_chs: int, kernel_size: tuple[int, int], *, dilation: int = 1,
                groups: int = 1, norm_layer=nn.BatchNorm2d, act_layer=nn.ReLU) -> nn.Sequential:
    """conv (no bias: the norm has one) -> norm -> activation, size-preserving."""
    dil = (dilation, dilation)
    return nn.Sequential(
        nn.Conv2d(in_chs, out_chs, kernel_size, padding=same_padding(kernel_size, dil),
                  dilation=dil, groups=groups, bias=False),
        norm_layer(out_chs),
        act_layer(inplace=True),
    )
