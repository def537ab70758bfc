"""mynapoint.rules: the programme's rules as pure Python over dated parameters.

This package imports no Django, no web framework and no database driver (an import-linter contract checks
it). Everything else in mynapoint asks these functions; nothing re-implements a rule.
"""

from mynapoint.rules.engine import (
    ApplicationDecision,
    Explanation,
    RegistrationDecision,
    ResidentEvaluator,
    ResidentHistory,
    ResidentResult,
    WorldOutcome,
    evaluate_resident,
    evaluate_world,
)
from mynapoint.rules.parameters import ParameterError, Parameters, load_parameters

__all__ = [
    "ApplicationDecision",
    "Explanation",
    "ParameterError",
    "Parameters",
    "RegistrationDecision",
    "ResidentEvaluator",
    "ResidentHistory",
    "ResidentResult",
    "WorldOutcome",
    "evaluate_resident",
    "evaluate_world",
    "load_parameters",
]
