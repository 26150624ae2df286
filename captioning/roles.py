"""Expert roles as versioned data: {version, roles: [{name, expertise, responsibilities}]}."""

import dataclasses
import importlib.resources
import json

DEFAULT_ROLES = "default-v1.json"


@dataclasses.dataclass(frozen=True)
class Role:
    name: str
    expertise: str
    responsibilities: str


@dataclasses.dataclass(frozen=True)
class RoleSet:
    version: str
    roles: tuple[Role, ...]


def load_roles(path: str | None = None) -> RoleSet:
    """The roles in `path`, or the five default roles; a malformed file is an error naming it."""
    if path is None:
        text = importlib.resources.files("captioning").joinpath("role_files").joinpath(DEFAULT_ROLES).read_text()
        where = f"captioning/role_files/{DEFAULT_ROLES}"
    else:
        with open(path) as f:
            text = f.read()
        where = path
    try:
        data = json.loads(text)
        roles = tuple(Role(**{k: str(r[k]) for k in ("name", "expertise", "responsibilities")}) for r in data["roles"])
        version = str(data["version"])
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(
            f"role file {where} must be JSON {{version, roles: [{{name, expertise, responsibilities}}]}}: {e!r}"
        ) from None
    if not roles or len({r.name for r in roles}) != len(roles):
        raise ValueError(f"role file {where} needs at least one role and distinct role names")
    return RoleSet(version, roles)
