"""The volunteer's daemon: rounds of check-in, measuring, signing, spooling, submitting.

``round`` (one round: ``run --once``), ``loop`` (``run``: rounds at the
interval, backoff, SIGTERM), ``client`` (the collector's API, probe side),
``rotation`` (key rotation, the conversation with the collector), ``privacy``
(the probe's own addresses scrubbed from what it sends). Files on disk belong
to ``probe_agent.state``.
"""
