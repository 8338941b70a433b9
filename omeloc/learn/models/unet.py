"""A 2D U-Net (Ronneberger et al. 2015) with configurable depth, width, normalization and block."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

NORMS = ("batch", "instance", "group", "none")
BLOCKS = ("conv", "residual", "convnext")


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    return nn.Identity()


class _DoubleConv(nn.Sequential):
    """Two 3×3 convolutions, each followed by the norm and a ReLU (the original U-Net block)."""

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


class _ResidualConv(nn.Module):
    """:class:`_DoubleConv` with a residual connection (a 1×1 projection when the width changes)."""

    def __init__(self, cin: int, cout: int, norm: str) -> None:
        super().__init__()
        bias = norm == "none"
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=bias),
            _norm(norm, cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=bias),
            _norm(norm, cout),
        )
        self.skip = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.skip(x))


class _ConvNeXt(nn.Module):
    """A 1×1 projection to the new width, then a ConvNeXt block (Liu et al. 2022).

    7×7 depthwise convolution → norm → 1×1 expansion ×4 → GELU → 1×1 back, added to its
    input.  The norm is the U-Net's (``"batch"``, ``"group"``, ...), as in Cytoland's 2D U-Net.
    """

    def __init__(self, cin: int, cout: int, norm: str) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cin, cout, 1)
        self.body = nn.Sequential(
            nn.Conv2d(cout, cout, 7, padding=3, groups=cout),
            _norm(norm, cout),
            nn.Conv2d(cout, 4 * cout, 1),
            nn.GELU(),
            nn.Conv2d(4 * cout, cout, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        return x + self.body(x)


_BLOCK_TYPES = {"conv": _DoubleConv, "residual": _ResidualConv, "convnext": _ConvNeXt}


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
        Normalization after each convolution (``"group"``: GroupNorm of up to 8 groups, whose
        statistics do not depend on the batch).
    block : {"conv", "residual", "convnext"}
        The block of each level: two 3×3 convolutions, the same with a residual connection, or
        a ConvNeXt block (7×7 depthwise, norm, 4× pointwise expansion, GELU).
    z_window : int
        Odd number of planes seen around each output plane (1: a 2D U-Net).  Above 1 the input
        is ``N x (in_channels * z_window) x H x W`` (the planes of each channel together, lowest
        z first) and a 2.5D stem (a ``z_window x 3 x 3`` 3D convolution, as in Cytoland's
        VSCyto2D/2.5D U-Nets) collapses z before the 2D U-Net.

    Notes
    -----
    The default (depth 4, 32 base channels) has about 7.8 M parameters.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        depth: int = 4,
        base_channels: int = 32,
        norm: str = "batch",
        block: str = "conv",
        z_window: int = 1,
    ) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"unknown norm {norm!r}; use one of {', '.join(NORMS)}")
        if block not in BLOCKS:
            raise ValueError(f"unknown block {block!r}; use one of {', '.join(BLOCKS)}")
        if depth < 1 or base_channels < 1 or in_channels < 1 or out_channels < 1:
            raise ValueError("depth, base_channels, in_channels and out_channels must be >= 1")
        if z_window < 1 or z_window % 2 == 0:
            raise ValueError(f"z_window must be odd and >= 1 (got {z_window})")
        self.config: dict[str, Any] = {
            "architecture": "unet",
            "in_channels": in_channels,
            "out_channels": out_channels,
            "depth": depth,
            "base_channels": base_channels,
            "norm": norm,
        }
        if (
            block != "conv"
        ):  # checkpoints of the plain U-Net stay readable by earlier omeloc versions
            self.config["block"] = block
        self.z_window = int(z_window)
        cin = in_channels
        self.stem: nn.Module | None = None
        if z_window > 1:
            # Cytoland's 2.5D stem: a K x 3 x 3 3D convolution over the K planes without z padding,
            # which collapses z to one plane.  On the (N, C*K, H, W) input (each channel's K planes
            # together) that is exactly a 3 x 3 2D convolution with C*K input channels (weights (F,
            # C, K, 3, 3) viewed as (F, C*K, 3, 3)): written so, it runs in channels_last like the
            # rest of the network
            self.config["z_window"] = z_window
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels * z_window, base_channels, 3, padding=1),
                nn.ReLU(inplace=True),
            )
            cin = base_channels
        make = _BLOCK_TYPES[block]
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList()
        for w in widths[:-1]:
            self.down.append(make(cin, w, norm))
            cin = w
        self.pool = nn.MaxPool2d(2)
        self.bottom = make(widths[-2], widths[-1], norm)
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for w_hi, w_lo in zip(widths[:0:-1], widths[-2::-1]):
            self.up.append(nn.ConvTranspose2d(w_hi, w_lo, 2, stride=2))
            self.dec.append(make(2 * w_lo, w_lo, norm))
        self.head = nn.Conv2d(widths[0], out_channels, 1)

    @property
    def multiple(self) -> int:
        """Spatial sizes must be multiples of this."""
        return 2 ** self.config["depth"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            self.stem is not None
        ):  # (N, C*K, H, W), the K planes of each channel together → (N, F, H, W)
            x = self.stem(x)
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottom(x)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips)):
            x = dec(torch.cat([up(x), skip], dim=1))
        return self.head(x)
