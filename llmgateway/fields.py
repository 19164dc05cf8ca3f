"""The fields of the JSON bodies people send to the admin API and the portal, declared once.

A body is a pydantic model (`Body`) whose fields use the types here: the same declaration checks
a request and describes it in the admin API's OpenAPI document, so the two cannot differ.
A refused body gets one 400 naming the field, in the words the API has always used: each field
type carries its message (`Says`), and `Body.parse` picks the first refusal the way people have
always been told: a body that is no object, then unknown fields, then missing ones, then each field
in the order declared.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, NotRequired, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    StrictBool,
    StrictStr,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError, core_schema
from typing_extensions import TypedDict

from .config import LIMIT_NAMES
from .errors import GatewayError, bad_request
from .inputs import MAX_TEXT

MAX_NAME = 100
MAX_EXPIRY_DAYS = 3650
MAX_LIMIT_VALUE = 1e15
NO_CONTROL = r"^[^\u0000-\u001f]*$"
SOME_TEXT = r"^[^\u0000-\u001f]*[^\s\u0000-\u001f][^\u0000-\u001f]*$"
REFUSED = "refused"
NOT_OBJECT = "The body must be a JSON object."

Words = str | Callable[[Any], str]
"""A field's message: a template ({field} is the field's name), or one chosen by the refused value."""


@dataclass(frozen=True)
class Says:
    """Any refusal of the field's checks answers with `words`; a refusal from inside the value
    (an item of a list) that has words of its own keeps them, unless the field itself failed."""

    words: Words

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.with_info_wrap_validator_function(self._check, handler(source))

    def message(self, value: Any, field: str | None) -> str:
        words = self.words if isinstance(self.words, str) else self.words(value)
        return words.replace("{field}", field or "")

    def _check(self, value: Any, handler: Callable[[Any], Any], info: ValidationInfo) -> Any:
        try:
            return handler(value)
        except ValidationError as exc:
            errors = exc.errors()
            inner = [e for e in errors if e["type"] == REFUSED and e["loc"]]
            if inner and all(e["loc"] for e in errors):
                raise refuse(inner[0]["msg"]) from None
            raise refuse(self.message(value, info.field_name)) from None


def refuse(message: str) -> PydanticCustomError:
    """A refusal with these words, raised from a check of a whole body or of a field."""
    return PydanticCustomError(REFUSED, message)


class Body(BaseModel):
    """A request body: a JSON object of known fields with JSON's own types (no "1" for 1)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    first: ClassVar[str | None] = None
    """A field checked before anything else, even whether the body is an object; a body without
    it gets that field's own message."""
    unknown: ClassVar[Mapping[str, str]] = {}
    """Messages for some unknown fields, where "Unknown field" would not say enough."""
    sent_order: ClassVar[bool] = False
    """Of several refused fields, name the first sent rather than the first declared."""

    @classmethod
    def parse(cls, body: Any, required: Iterable[str] = (), context: Mapping[str, Any] | None = None) -> Self:
        """The checked body, or a 400. `required` names fields this caller must send that the
        declaration leaves optional."""
        missing: list[ErrorDetails] = [{"type": "missing", "loc": (name,), "msg": "", "input": None}
                                       for name in required if isinstance(body, dict) and name not in body]
        try:
            parsed = cls.model_validate(body, context=context)
        except ValidationError as exc:
            raise cls._refusal(body, [*exc.errors(), *missing]) from None
        if missing:
            raise cls._refusal(body, missing)
        return parsed

    @classmethod
    def _refusal(cls, body: Any, errors: list[ErrorDetails]) -> GatewayError:
        sent = {name: i for i, name in enumerate(body)} if cls.sent_order and isinstance(body, dict) else {}
        error = min(errors, key=lambda e: (cls._rank(e), sent.get(e["loc"][0], -1) if e["loc"] else -1))
        loc, kind = error["loc"], error["type"]
        field = str(loc[0]) if loc else None
        if cls.first is not None and (field == cls.first or kind == "model_type"):
            value = body.get(cls.first) if isinstance(body, dict) else None
            said = next(m for m in cls.model_fields[cls.first].metadata if isinstance(m, Says))
            return bad_request(said.message(value, cls.first), cls.first)
        if kind == "model_type":
            return bad_request(NOT_OBJECT)
        if kind == "extra_forbidden":
            return bad_request(cls.unknown.get(str(field), f"Unknown field {field!r}."), field)
        if kind == "missing":
            return bad_request(f"{field} is required.", field)
        return bad_request(error["msg"], field)

    @classmethod
    def _rank(cls, error: ErrorDetails) -> int:
        loc = error["loc"]
        if cls.first is not None and (not loc or loc[0] == cls.first):
            return 0
        return {"model_type": 0, "extra_forbidden": 1, "missing": 2}.get(error["type"], 3)

    def given(self) -> dict[str, Any]:
        """The fields sent, in the order declared."""
        return {name: getattr(self, name) for name in type(self).model_fields if name in self.model_fields_set}


class Change(Body):
    """A change of some fields of a thing: at least one."""

    model_config = ConfigDict(json_schema_extra={"minProperties": 1})

    @model_validator(mode="after")
    def _some(self) -> Self:
        if not self.model_fields_set:
            raise refuse(f"Send at least one of {', '.join(type(self).model_fields)}.")
        return self


def _name_words(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        return "Give the key a name."
    return f"The name must be at most {MAX_NAME} characters, without control characters."


KeyName = Annotated[StrictStr, Field(min_length=1, pattern=SOME_TEXT), AfterValidator(str.strip),
                    Field(max_length=MAX_NAME), Says(_name_words)]
"""The name of a key or an admin token: some text without control characters, at most MAX_NAME
characters once trimmed."""


def person(blank: str) -> Any:
    """A username as an admin types it (trimmed), with `blank` for one that is only spaces."""
    def words(value: Any) -> str:
        if not isinstance(value, str):
            return "{field} must be a string."
        if not 0 < len(value) <= MAX_TEXT or any(ord(c) < 0x20 for c in value):
            return f"{{field}} must be 1 to {MAX_TEXT} characters without control characters."
        return blank

    return Annotated[StrictStr, Field(min_length=1, max_length=MAX_TEXT, pattern=SOME_TEXT),
                     AfterValidator(str.strip), Says(words)]


ModelIds = Annotated[list[StrictStr], Says("{field} must be a list of model ids."),
                     Field(description="Empty: all models.")]
ExpiresDays = Annotated[float | None, Field(gt=0, le=MAX_EXPIRY_DAYS, allow_inf_nan=False),
                        Says(f"{{field}} must be a number of days from 1 to {MAX_EXPIRY_DAYS}, or null.")]
UnixTime = Annotated[float | None, Field(ge=0, le=1e11, allow_inf_nan=False, description="Unix time in seconds."),
                     Says("{field} must be a Unix time in seconds, or null.")]
Flag = Annotated[StrictBool, Says("{field} must be true or false.")]
LimitValue = Annotated[float, Field(ge=0, le=MAX_LIMIT_VALUE, allow_inf_nan=False, description="0 = no limit.")]


def limits(names: tuple[str, ...], title: str) -> Any:
    """Limit overrides {name: number} of these limits (0 = no limit)."""
    table = TypedDict(title, {name: NotRequired[LimitValue] for name in names})  # type: ignore[misc]
    table.__pydantic_config__ = ConfigDict(extra="forbid", strict=True)  # type: ignore[attr-defined]
    known = ", ".join(names)

    def words(value: Any) -> str:
        if not isinstance(value, dict):
            return f"{{field}} must be an object of limits ({known})."
        unknown = next((name for name in value if name not in names), None)
        if unknown is not None:
            return f"{{field}}.{unknown} is not a known limit (known: {known})."
        bad = next(name for name, n in value.items()
                   if isinstance(n, bool) or not isinstance(n, int | float) or not 0 <= n <= MAX_LIMIT_VALUE)
        return f"{{field}}.{bad} (0 = no limit) must be a number from 0 to {MAX_LIMIT_VALUE:g}."

    return Annotated[table, Says(words)]


UserLimits = limits(LIMIT_NAMES, "UserLimits")


class KeyNamed(Body):
    """Only a key's name: for the CLI's `--name`, checked as the portal and the admin API check theirs."""

    name: KeyName


def known_models(models: list[str], allowed: Iterable[str]) -> list[str]:
    """A key's models, each one the door offers (`allowed`), sorted and once each."""
    offered = set(allowed)
    for model in models:
        if model not in offered:
            raise bad_request(f"Unknown or unavailable model {model!r}.", "models")
    return sorted(set(models))
