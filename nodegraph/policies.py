"""Optional workflow policies: extra validation passes a run may require.

A policy is a named check ``check(plan, registry) -> list[NodeError]`` run after ordinary validation.
Node modules register the policies they define (``nodes/safety/safety.py`` registers ``require_safety``); a run
applies a policy when the engine was built with it (``Engine(policies=["require_safety"])``) or when the
prompt's ``extra_data`` sets it (``{"require_safety": true}``). A failing policy raises
:class:`~nodegraph.errors.ValidationFailed` like any other validation error, before anything runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterable

from .errors import NodeError, ValidationFailed

if TYPE_CHECKING:  # pragma: no cover
    from .plan import Plan
    from .registry import NodeRegistry

PolicyCheck = Callable[["Plan", "NodeRegistry"], list[NodeError]]

_POLICIES: dict[str, PolicyCheck] = {}


def register_policy(name: str, check: PolicyCheck) -> None:
    _POLICIES[name] = check


def known_policies() -> list[str]:
    return sorted(_POLICIES)


def requested_policies(engine_policies: Iterable[str], extra_data: dict | None) -> list[str]:
    """The engine's policies plus those switched on in ``extra_data`` (``{"require_safety": true}``)."""
    names = list(dict.fromkeys(engine_policies))
    for key, value in (extra_data or {}).items():
        if key in _POLICIES and value is True and key not in names:
            names.append(key)
    return names


def check_policies(plan: "Plan", registry: "NodeRegistry", names: Iterable[str]) -> None:
    errors: list[NodeError] = []
    for name in names:
        check = _POLICIES.get(name)
        if check is None:
            errors.append(NodeError("unknown_policy", f"the workflow policy '{name}' is not known; "
                                    f"known policies: {', '.join(known_policies()) or 'none'}"))
            continue
        errors += check(plan, registry)
    if errors:
        raise ValidationFailed(errors)
