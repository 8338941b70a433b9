"""Pydantic argument models of omeloc's Fractal tasks (validated before anything is read)."""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["ChannelInput", "PredictInitArgs"]


class ChannelInput(BaseModel):
    """A channel of an image, chosen by its label or by its wavelength id (exactly one of them).

    Attributes:
        label: The channel's label (``omero.channels[].label``), e.g. ``actin``.
        wavelength_id: The channel's ``wavelength_id`` (Fractal's convention), e.g. ``A01_C01``.
    """

    model_config = ConfigDict(extra="forbid")

    label: str | None = Field(default=None, min_length=1)
    wavelength_id: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.label is None) == (self.wavelength_id is None):
            raise ValueError("give exactly one of label and wavelength_id")
        return self


class PredictInitArgs(BaseModel):
    """What the training init task hands to each parallel prediction.

    Attributes:
        model: The checkpoint folder the init task trained.
    """

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
