"""Layer 7, running a study: `objective` (one trial: train, report, prune, record), `runner`
(a worker's loop over trials and phases), `launch` (one process or many workers), `options`
(a launch's settings and its storage), `progress` (the live view) and `proctitle` (what `ps`
shows of a worker)."""
