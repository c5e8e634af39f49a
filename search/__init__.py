"""regsearch: hyperparameter search for the regularization of deep image classifiers.

From Python, `search.api`: `run(config, overrides=[...])` runs a study and returns its
verdict, `best(study)` reads it, `load_champion(study)` loads the registered model.
"""

__version__ = "0.1.0"
