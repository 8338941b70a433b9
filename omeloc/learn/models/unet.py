"""A 2D U-Net (Ronneberger et al. 2015) with configurable depth, width and normalization."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

NORMS = ("batch", "instance", "group", "none")


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    return nn.Identity()


class _DoubleConv(nn.Sequential):
    def __init__(self, cin: int, cout: int, norm: str) -> None:
        bias = norm == "none"
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=bias),
            _norm(norm, cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=bias),
            _norm(norm, cout),
            nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    """2D U-Net mapping ``N x in_channels x H x W`` to ``N x out_channels x H x W``.

    Parameters
    ----------
    in_channels, out_channels : int
        Number of source and target channels.
    depth : int
        Number of 2x down-samplings (levels below the top). ``H`` and ``W`` must be
        multiples of ``2 ** depth``; the tiling engine takes care of that.
    base_channels : int
        Feature maps at the top level; doubled at each level down.
    norm : {"batch", "instance", "group", "none"}
        Normalization after each convolution.

    Notes
    -----
    The default (depth 4, 32 base channels) has about 7.8 M parameters.
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, depth: int = 4,
                 base_channels: int = 32, norm: str = "batch") -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"unknown norm {norm!r}; use one of {', '.join(NORMS)}")
        if depth < 1 or base_channels < 1 or in_channels < 1 or out_channels < 1:
            raise ValueError("depth, base_channels, in_channels and out_channels must be >= 1")
        self.config: dict[str, Any] = {
            "architecture": "unet", "in_channels": in_channels, "out_channels": out_channels,
            "depth": depth, "base_channels": base_channels, "norm": norm,
        }
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList()
        cin = in_channels
        for w in widths[:-1]:
            self.down.append(_DoubleConv(cin, w, norm))
            cin = w
        self.pool = nn.MaxPool2d(2)
        self.bottom = _DoubleConv(widths[-2], widths[-1], norm)
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for w_hi, w_lo in zip(widths[:0:-1], widths[-2::-1]):
            self.up.append(nn.ConvTranspose2d(w_hi, w_lo, 2, stride=2))
            self.dec.append(_DoubleConv(2 * w_lo, w_lo, norm))
        self.head = nn.Conv2d(widths[0], out_channels, 1)

    @property
    def multiple(self) -> int:
        """Spatial sizes must be multiples of this."""
        return 2 ** self.config["depth"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottom(x)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips)):
            x = dec(torch.cat([up(x), skip], dim=1))
        return self.head(x)
