"""Pictures: image grids of reconstructions and samples."""

from aelab.report.images import make_grid, save_image_grid

__all__ = ["make_grid", "save_image_grid"]
