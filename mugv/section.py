"""The base class of every typed params section: unknown keys, non-finite floats and bad assignments are errors."""

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """Base of every params section. Floats must be finite (`.inf`, `.nan` are rejected, naming the key)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)
