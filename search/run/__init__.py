"""Layer 7, running a study: `objective` (one trial: train, report, prune, record), `runner`
(a worker's loop over trials and phases), `launch` (one process or many workers), `progress`
(the live view) and `proctitle` (what `ps` shows of a worker)."""
