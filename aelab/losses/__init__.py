"""Loss terms, the weighted objective and schedules."""

from aelab.losses.objective import Objective, StepTerm, Term
from aelab.losses.terms import (
    CapacityKL,
    ContractivePenalty,
    DensityRatioTC,
    DIPCovariancePenalty,
    DiscriminatorLoss,
    KLDecomposition,
    ReconstructionNLL,
    SparsityKL,
)
from aelab.schedules import Schedule, parse_schedule

__all__ = ["CapacityKL", "ContractivePenalty", "DIPCovariancePenalty", "DensityRatioTC", "DiscriminatorLoss",
           "KLDecomposition", "Objective", "ReconstructionNLL", "Schedule", "SparsityKL", "StepTerm", "Term",
           "parse_schedule"]
