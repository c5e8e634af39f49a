"""`regsearch bench` (layer 9, imported only by the CLI's `bench` command): `suite` runs the
figures, each in its own module (`throughput`, `efficiency`, `regret`, `fashion`, `storage`,
`sweep`, `real`; `runs` holds what they share)."""
