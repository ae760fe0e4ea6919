"""Measuring: the engine and its network steps.

``engine`` runs one flow per resolved address (TCP, decoy TLS, a new
connection, the instance's TLS, HTTP over it) after every DNS query at once;
``dns``, ``tls``, ``http`` and ``netio`` are the steps and the socket dialer;
``failures`` is the only place where exceptions become failure strings;
``observations`` the flat per-step records; ``hints`` the local evidence that
needs no control; ``parallel`` spreads long lists over worker processes;
``clock`` the monotonic clock of ``t0``/``t``. The collector's control prober
runs this same engine.
"""
