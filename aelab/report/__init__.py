"""Pictures: image grids of reconstructions and samples; figures of latent spaces and training."""

from aelab.report.figures import (
    latent_traversal,
    plot_kl_per_dimension,
    plot_latent_scatter,
    plot_training_curves,
    plot_traversal,
    write_run_figures,
)
from aelab.report.images import make_grid, save_image_grid
from aelab.report.sequence import plot_trajectories, rollout_strip, write_rollout

__all__ = [
    "latent_traversal",
    "make_grid",
    "plot_kl_per_dimension",
    "plot_latent_scatter",
    "plot_training_curves",
    "plot_trajectories",
    "plot_traversal",
    "rollout_strip",
    "save_image_grid",
    "write_rollout",
    "write_run_figures",
]
