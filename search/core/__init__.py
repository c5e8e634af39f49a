"""Layer 0, the ground floor: what every other layer may use and that imports nothing of the
project. `errors` (the one-line user errors), `urls` (storage and tracking addresses),
`records` (the attribute keys a trial and a study carry, and how trials rank), `stats`
(intervals and the paired bootstrap), `files`, `imports`, `memory`, `signals`."""
