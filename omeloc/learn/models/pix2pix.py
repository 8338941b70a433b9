"""pix2pix (Isola et al. 2017): a U-Net generator trained against a 70×70 PatchGAN.

The generator is :class:`omeloc.learn.models.UNet`; this module adds the discriminator and the
losses.  Objective: ``L_G = cGAN(D(x, G(x)), real) + λ · |G(x) - y|₁`` with λ = 100 and
``L_D = ½ [cGAN(D(x, y), real) + cGAN(D(x, G(x)), fake)]``, Adam lr 2e-4, β = (0.5, 0.999).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

LAMBDA_L1 = 100.0
LR = 2e-4
BETAS = (0.5, 0.999)


class PatchGAN(nn.Module):
    """The 70×70 PatchGAN discriminator: C64-C128-C256-C512, then a 1-channel map of logits.

    Each output logit judges one 70×70 patch of the (source, target) pair concatenated
    along channels.  4×4 convolutions with strides 2, 2, 2, 1, 1; instance norm (batch
    statistics of tiny crops are unstable) except on the first layer; LeakyReLU 0.2.

    Parameters
    ----------
    in_channels
        Source channels + target channels.
    base_channels
        Width of the first layer (64 in the paper).
    n_layers
        Strided layers (3 gives the 70×70 receptive field).
    spectral_norm
        Spectral normalization (Miyato et al. 2018) on every convolution instead of instance
        norm: the discriminator stays 1-Lipschitz, which keeps its gradients to the generator
        useful when it would otherwise win quickly.
    """

    def __init__(
        self,
        in_channels: int = 2,
        base_channels: int = 64,
        n_layers: int = 3,
        spectral_norm: bool = False,
    ) -> None:
        super().__init__()
        self.config: dict[str, Any] = {
            "architecture": "patchgan",
            "in_channels": in_channels,
            "base_channels": base_channels,
            "n_layers": n_layers,
            "spectral_norm": spectral_norm,
        }
        sn = nn.utils.parametrizations.spectral_norm if spectral_norm else (lambda m: m)
        layers: list[nn.Module] = [
            sn(nn.Conv2d(in_channels, base_channels, 4, stride=2, padding=1)),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        width = base_channels
        for i in range(1, n_layers + 1):
            prev, width = width, base_channels * min(2**i, 8)
            stride = 2 if i < n_layers else 1
            norm = nn.Identity() if spectral_norm else nn.InstanceNorm2d(width, affine=True)
            layers += [
                sn(nn.Conv2d(prev, width, 4, stride=stride, padding=1, bias=spectral_norm)),
                norm,
                nn.LeakyReLU(0.2, inplace=True),
            ]
        layers.append(sn(nn.Conv2d(width, 1, 4, stride=1, padding=1)))
        self.net = nn.Sequential(*layers)

    @staticmethod
    def receptive_field(n_layers: int = 3) -> int:
        """Receptive field (pixels) of one output logit: 70 for 3 layers."""
        rf = 1
        for stride in [1, 1] + [
            2
        ] * n_layers:  # walk back from the output: last conv, stride-1 conv, then strided
            rf = rf * stride + (4 - stride)
        return rf

    def forward(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([source, target], dim=1))


_bce = nn.BCEWithLogitsLoss()


def generator_loss(
    d_fake: torch.Tensor, fake: torch.Tensor, real: torch.Tensor, lambda_l1: float = LAMBDA_L1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(total, gan, l1)`` of the generator: fool D, stay close to the target."""
    gan = _bce(d_fake, torch.ones_like(d_fake))
    l1 = (fake - real).abs().mean()
    return gan + lambda_l1 * l1, gan, l1


def discriminator_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """½ (BCE(D(x, y), 1) + BCE(D(x, G(x)), 0))."""
    return 0.5 * (_bce(d_real, torch.ones_like(d_real)) + _bce(d_fake, torch.zeros_like(d_fake)))
