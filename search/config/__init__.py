"""Layer 1, what a study asks for: `schema` (the study file's keys, validated into
`StudyConfig`), `trial` (`TrialConfig`, one trial's settings, and the regularizer table:
`Regularization`'s fields), `space` (the search space, parsed once per config into typed
entries: `space_of`) and `overrides` (`key=value` on the command line)."""
