"""Detection: from verdicts to block events, and the work that runs in the background.

``machine`` is the pure state machine per (domain, country); ``passes`` runs one
detection pass over the database; ``control`` is the collector's own vantage (the
control prober); ``loops`` runs the prober, the passes and the alert outbox in
the process that holds the lease.
"""
