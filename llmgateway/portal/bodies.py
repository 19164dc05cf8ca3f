"""The bodies of the portal's requests, declared with the same field types as the admin API's
(`llmgateway.fields`), so a key's name, models and expiry are checked alike at both doors."""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import ConfigDict, Field, StrictStr

from ..fields import Body, ExpiresDays, KeyName, ModelIds, Says


class NewKey(Body):
    """A key a person makes for themselves; one without a name is told to give it one."""

    name: KeyName = Field(None, validate_default=True)
    models: ModelIds = Field(default_factory=list)
    expires_days: ExpiresDays = None


class Terms(Body):
    """The version of the terms a person accepts; whatever else the page sends is ignored."""

    model_config = ConfigDict(extra="ignore")
    first: ClassVar[str | None] = "version"

    version: Annotated[StrictStr, Says("Send the version of the terms you accept, as a string.")]
