"""Loss terms, the weighted objective and schedules."""

from aelab.losses.objective import Objective, Term
from aelab.losses.terms import ContractivePenalty, ReconstructionNLL, SparsityKL
from aelab.schedules import Schedule, parse_schedule

__all__ = ["ContractivePenalty", "Objective", "ReconstructionNLL", "Schedule", "SparsityKL", "Term",
           "parse_schedule"]
