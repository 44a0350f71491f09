"""lobsearch: Ray-distributed hyperparameter search for limit-order-book direction models."""

__version__ = "0.1.0"
