"""What one optimizer step does: the networks, their optimizers and losses, for U-Net and pix2pix.

:func:`build_objective` makes the networks from a :class:`~omeloc.config.TrainConfig` (seeded,
so the same seed gives the same initial weights) and wraps them in an objective whose
:meth:`~Objective.step` takes one batch and returns its losses.  Its
:meth:`~Objective.state_dict` and :meth:`~Objective.load_state_dict` carry weights and
optimizer states through ``last.pt`` for ``resume``.

- :class:`UNetObjective`: the U-Net with an MSE or L1 pixel loss, optionally plus ``1 - SSIM``
  and a weighted L1 on high-pass detail (:mod:`omeloc.learn.losses`), Adam (β = 0.9, 0.999).
- :class:`Pix2PixObjective`: U-Net generator + 70×70 PatchGAN (Isola et al. 2017): a
  discriminator step on real vs fake pairs, then a generator step on L1 + λ·cGAN, Adam with
  β1 = 0.5.  With ``warmup`` (default: the first half of the run) the generator trains on L1
  alone (no discriminator), so the adversarial game starts from a generator that already
  predicts; the discriminator is spectral-normalized by default.

Mixed precision (bf16/fp16 autocast, with a gradient scaler for fp16) is used on CUDA only;
:func:`lr_factor` is the learning-rate schedule, which :meth:`Objective.begin_step` applies.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from omeloc.config import TrainConfig
from omeloc.engine.device import autocast
from omeloc.learn.losses import detail_l1, ssim
from omeloc.learn.models import PatchGAN, UNet
from omeloc.learn.models.pix2pix import BETAS, discriminator_loss, generator_loss

__all__ = [
    "Objective",
    "Pix2PixObjective",
    "UNetObjective",
    "build_objective",
    "default_lr",
    "lr_factor",
]

#: Adam learning rate when none is given (both models; pix2pix keeps its paper betas)
UNET_LR = 3e-3
UNET_BETAS = (0.9, 0.999)


def default_lr(model: str) -> float:
    """The learning rate used when the configuration gives none: 3e-3 for both models.

    pix2pix's paper rate (:data:`omeloc.learn.models.pix2pix.LR`, 2e-4) learned 3–10x less structure
    in minutes of CPU training than 3e-3 with the L1 warm-up (measured:
    ``benchmarks/related_pairs.py``).
    """
    return UNET_LR


def lr_factor(step: int, steps: int, schedule: str) -> float:
    """Multiplier of the base learning rate at 0-based ``step`` of ``steps``.

    ``"cosine"``: a linear warm-up over the first 5 % of the steps, then a cosine decay to 5 %
    of the base rate (a function of the step alone, so a resumed run follows it exactly).
    ``"constant"``: always 1.
    """
    if schedule == "constant":
        return 1.0
    warm = max(1, steps // 20)
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(1, steps - warm)
    return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


class Objective:
    """A generator ``net`` trained with Adam; subclasses define the losses of one step.

    Parameters
    ----------
    net
        The generator (on ``device``).
    lr, betas
        Adam's learning rate and betas.
    device, precision
        Where the step runs and its resolved precision (``"fp32"``, ``"bf16"``, ``"fp16"``).
    """

    name = "objective"
    #: what the checkpoint's provenance records as the loss
    loss_name = ""

    def __init__(
        self,
        net: torch.nn.Module,
        lr: float,
        betas: tuple[float, float],
        device: torch.device,
        precision: str,
    ) -> None:
        self.net, self.lr, self.betas = net, lr, tuple(betas)
        self.device, self.precision = device, precision
        self.opt = torch.optim.Adam(net.parameters(), lr=lr, betas=betas)
        self.scaler = torch.amp.GradScaler("cuda", enabled=(precision == "fp16"))

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        """Every optimizer of the objective (their learning rates follow the schedule together)."""
        return [self.opt]

    def set_lr(self, lr: float) -> None:
        """Set the learning rate of every optimizer."""
        for o in self.optimizers:
            for g in o.param_groups:
                g["lr"] = lr

    def begin_step(self, step: int, steps: int, schedule: str) -> None:
        """Prepare 0-based ``step`` of ``steps``: the scheduled learning rate (subclasses:
        phases)."""
        self.set_lr(self.lr * lr_factor(step, steps, schedule))

    def autocast(self) -> Any:
        """The autocast context of forward passes (mixed precision on CUDA only)."""
        return autocast(self.device, self.precision, enabled=self.device.type == "cuda")

    def step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """One optimizer step on the batch ``x → y``; returns the losses (``loss``, ``l1``, ...)."""
        raise NotImplementedError

    def _generator_step(self, loss: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()

    def state_dict(self) -> dict[str, Any]:
        """Weights and optimizer states, as ``last.pt`` stores them."""
        return {"model": self.net.state_dict(), "optimizer": self.opt.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.net.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])


class UNetObjective(Objective):
    """The U-Net alone: an MSE (default) or L1 pixel loss, ``+ssim`` adds ``1 - SSIM``, ``detail`` a
    weighted L1 on the high-pass detail."""

    name = "unet"

    def __init__(
        self,
        net: torch.nn.Module,
        lr: float,
        device: torch.device,
        precision: str,
        loss: str = "mse",
        detail: float = 0.0,
    ) -> None:
        super().__init__(net, lr, UNET_BETAS, device, precision)
        self.loss = self.loss_name = loss  # the detail term's weight is recorded as ``detail``
        self.detail = float(detail)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        with self.autocast():
            fake = self.net(x)
        fake = fake.float()
        l1 = (fake - y).abs().mean()
        loss = (fake - y).square().mean() if self.loss.startswith("mse") else l1
        if self.loss.endswith("+ssim"):
            loss = loss + (1.0 - ssim(fake, y))
        if self.detail:
            loss = loss + self.detail * detail_l1(fake, y)
        self._generator_step(loss)
        return {"loss": loss, "l1": l1}


class Pix2PixObjective(Objective):
    """pix2pix: a PatchGAN discriminator step, then the generator on L1 + λ·cGAN.

    ``warmup``: the fraction of the run (its first steps) in which the generator is trained on
    λ·L1 alone and the discriminator is left untouched.
    """

    name = "pix2pix"
    loss_name = "l1+cgan"

    def __init__(
        self,
        net: torch.nn.Module,
        disc: torch.nn.Module,
        lr: float,
        device: torch.device,
        precision: str,
        lambda_l1: float,
        warmup: float = 0.0,
    ) -> None:
        super().__init__(net, lr, BETAS, device, precision)
        self.disc, self.lambda_l1, self.warmup = disc, lambda_l1, float(warmup)
        self.opt_d = torch.optim.Adam(disc.parameters(), lr=lr, betas=BETAS)
        self.adversarial = self.warmup == 0

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.opt, self.opt_d]

    def begin_step(self, step: int, steps: int, schedule: str) -> None:
        """The scheduled learning rate; adversarial from step ``warmup * steps`` on."""
        super().begin_step(step, steps, schedule)
        self.adversarial = step >= self.warmup * steps

    def step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        with self.autocast():
            fake = self.net(x)
        fake = fake.float()
        if not self.adversarial:  # warm-up: the generator on L1 alone
            l1 = (fake - y).abs().mean()
            loss = self.lambda_l1 * l1
            self._generator_step(loss)
            return {"loss": loss, "l1": l1}
        # discriminator step on real vs (detached) fake pairs
        self.opt_d.zero_grad(set_to_none=True)
        with self.autocast():
            d_loss = discriminator_loss(
                self.disc(x, y).float(), self.disc(x, fake.detach()).float()
            )
        self.scaler.scale(d_loss).backward()
        self.scaler.step(self.opt_d)
        # generator step: fool D, stay close to the target
        with self.autocast():
            d_fake = self.disc(x, fake).float()
        loss, gan, l1 = generator_loss(d_fake, fake, y, self.lambda_l1)
        self._generator_step(loss)
        return {"loss": loss, "l1": l1, "gan": gan, "d_loss": d_loss}

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "discriminator": self.disc.state_dict(),
            "optimizer_d": self.opt_d.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.disc.load_state_dict(state["discriminator"])
        self.opt_d.load_state_dict(state["optimizer_d"])


def build_objective(
    cfg: TrainConfig, in_channels: int, out_channels: int, device: torch.device, precision: str
) -> Objective:
    """The networks of ``cfg.model`` (seeded with ``cfg.seed``) on ``device``, in their
    objective."""
    torch.manual_seed(cfg.seed)
    net = UNet(
        in_channels,
        out_channels,
        depth=cfg.depth,
        base_channels=cfg.base_channels,
        norm=cfg.norm,
        block=cfg.block,
        z_window=cfg.z_window,
    ).to(device)
    lr = default_lr(cfg.model) if cfg.lr is None else cfg.lr
    if cfg.model == "pix2pix":
        disc = PatchGAN(
            in_channels * cfg.z_window + out_channels, spectral_norm=cfg.spectral_norm
        ).to(device)
        return Pix2PixObjective(net, disc, lr, device, precision, cfg.lambda_l1, cfg.warmup)
    return UNetObjective(net, lr, device, precision, cfg.loss, cfg.detail)
