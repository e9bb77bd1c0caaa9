"""The sandbox's own YAML files (the IVR menu, the phone numbers) read into their models."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

Model = TypeVar("Model", bound=BaseModel)


def load_yaml(model: type[Model], path: str | Path, what: str, error: type[Exception]) -> Model:
    """The file as a `model`; `error` says what is wrong and where ("<path>: not a valid <what>:" and a line a problem)."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise error(f"{path}: cannot read the {what}: {exc}") from exc
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise error(f"{path}: not a valid {what}:\n{describe(exc, what)}") from exc


def describe(problems: ValidationError, what: str) -> str:
    """Each problem on its own line, at its place in the file (a dotted path)."""
    lines = []
    for problem in problems.errors():
        where = ".".join(str(part) for part in problem["loc"]) or what
        lines.append(f"  {where}: {problem['msg'].removeprefix('Value error, ')}")
    return "\n".join(lines)
