"""Reading what we need from an EDC contract policy: the consumer's id and the contract's end.

The policy arrives in EDC's Jackson form and is otherwise opaque to us. A contract end is an atomic
constraint whose left operand names an end date (``contractEndDate``, ``inForceDate``, with or without a
namespace prefix), whose operator is "before" (``LT``/``LEQ``/``lt``/``lteq``) and whose right operand is an
ISO-8601 date-time or EDC's relative form ``contractAgreement+<n><unit>`` (unit ``s``, ``m``, ``h`` or
``d``; counted from the agreement, which for us is the provisioning moment). The earliest such end wins;
constraints on other operands are not ours to read. An end constraint whose date cannot be read is
refused (ValueError naming it), never replaced by the default lifetime.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

END_OPERANDS = ("contractenddate", "inforcedate")
BEFORE_OPERATORS = {"lt", "leq", "lteq", "odrl:lt", "odrl:lteq"}
RELATIVE = re.compile(r"\s*contractAgreement\s*\+\s*(\d{1,9})\s*([smhd])\s*", re.IGNORECASE)
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def assignee(policy: dict[str, Any] | None) -> str | None:
    value = (policy or {}).get("assignee")
    return value.strip() if isinstance(value, str) and value.strip() else None


def contract_end(policy: dict[str, Any] | None, agreed: datetime) -> datetime | None:
    """The earliest end the policy's constraints give (relative ones counted from ``agreed``); None when it
    has none. ValueError when an end constraint's date cannot be read."""
    ends = [d for d in (_end_of(c, agreed) for c in _constraints(policy or {})) if d is not None]
    return min(ends) if ends else None


def _constraints(node: Any) -> Iterator[dict[str, Any]]:
    """Every dict in the policy that looks like an atomic constraint, at any depth."""
    if isinstance(node, dict):
        if ("leftExpression" in node or "leftOperand" in node) and "operator" in node:
            yield node
        for value in node.values():
            yield from _constraints(value)
    elif isinstance(node, list):
        for item in node:
            yield from _constraints(item)


def _value(expr: Any) -> Any:
    if isinstance(expr, dict):
        for key in ("value", "@value", "@id"):
            if key in expr:
                return _value(expr[key])
        return None
    return expr


def _end_of(constraint: dict[str, Any], agreed: datetime) -> datetime | None:
    left = _value(constraint.get("leftExpression", constraint.get("leftOperand")))
    operator = _value(constraint.get("operator"))
    right = _value(constraint.get("rightExpression", constraint.get("rightOperand")))
    if not isinstance(left, str) or not isinstance(operator, str) or not isinstance(right, str):
        return None
    name = left.rsplit(":", 1)[-1].rsplit("/", 1)[-1].lower()
    if name not in END_OPERANDS or operator.lower() not in BEFORE_OPERATORS:
        return None
    relative = RELATIVE.fullmatch(right)
    if relative:
        return agreed + timedelta(seconds=int(relative[1]) * UNITS[relative[2].lower()])
    try:
        moment = datetime.fromisoformat(right.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"the contract end {right[:100]!r} ({left}) is neither an ISO-8601 date-time nor "
            "contractAgreement+<n>s|m|h|d"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
