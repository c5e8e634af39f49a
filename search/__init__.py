"""regsearch: hyperparameter search for the regularization of deep image classifiers."""

__version__ = "0.1.0"
