"""Loss terms, the weighted objective and schedules."""

from aelab.losses.objective import Objective, Term
from aelab.losses.schedules import Schedule, parse_schedule
from aelab.losses.terms import ContractivePenalty, ReconstructionNLL, SparsityKL

__all__ = ["ContractivePenalty", "Objective", "ReconstructionNLL", "Schedule", "SparsityKL", "Term",
           "parse_schedule"]
