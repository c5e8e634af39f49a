"""Layer 4, the Optuna study: `storage` (opening and locking the storage), `studies`
(create or resume a study, its sampler and pruner, the best trial), `studyfile` (reading a study
file), `evidence` (the confirm phase and the ablation), `refit` (the champion on train +
validation), `wilcoxon` (a pruner) and `sweep` (a study per training-set size)."""
