"""Layer 1, what a study asks for: `schema` (the study file's keys, validated into
`StudyConfig`), `trial` (`TrialConfig`, one trial's settings), `space` (the search space, parsed
once into typed entries, and the regularizer table) and `overrides` (`key=value` on the
command line)."""
