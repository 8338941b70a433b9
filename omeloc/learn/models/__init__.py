"""Networks: a 2D U-Net and pix2pix (U-Net generator + PatchGAN discriminator)."""

from omeloc.learn.models.pix2pix import PatchGAN
from omeloc.learn.models.unet import UNet

__all__ = ["PatchGAN", "UNet"]
