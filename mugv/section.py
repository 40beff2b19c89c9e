"""The base class of every typed params section: unknown keys are errors, assignments are validated."""

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """Base of every params section."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
