"""Moved to :mod:`aelab.data.batches` (metrics batch data too, and sit below training); re-exported
here for the modules that still import it from this path."""

from aelab.data.batches import epoch_order, eval_batches, steps_per_epoch, train_batches

__all__ = ["epoch_order", "eval_batches", "steps_per_epoch", "train_batches"]
