"""Layer 6, what a study says: `summary` (the best trial, the verdict, the trial tables),
`dashboard` (notes and learning curves in optuna-dashboard), and `regsearch report`'s HTML page
(`page`), drawn from what `data` reads of the study: `figures` (matplotlib) and `plots` (Optuna's
plotly figures); `sweep` draws a size sweep."""
