"""Layer 5, MLflow: `runs` (`Tracker`: a run per trial under the study's parent run),
`registry` (model versions and checkpoints), `champion` (the one owner of `@champion`:
promotion, repair, test evaluation and the model URI) and `mlflow_store` (the local store)."""
