"""Policies applied around upstream calls, in pipeline order (see ``base``)."""

from kanal.gateway.policy.base import Call, Caller, Outcome, Policy, Usage
from kanal.gateway.policy.budget import BudgetPolicy
from kanal.gateway.policy.cache import CachePolicy
from kanal.gateway.policy.context import ContextPolicy
from kanal.gateway.policy.guardrails import GuardrailsPolicy
from kanal.gateway.policy.limits import LimitsPolicy

PIPELINE: tuple[type[Policy], ...] = (
    GuardrailsPolicy,
    ContextPolicy,
    CachePolicy,
    LimitsPolicy,
    BudgetPolicy,
)
"""``before`` runs in this order; ``after`` in reverse."""

__all__ = ["PIPELINE", "Call", "Caller", "Outcome", "Policy", "Usage"]
