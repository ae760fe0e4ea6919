"""Services: the collector's logic and writes, shared by the API and the CLI.

``auth`` (envelope authentication, the first step of every probe request),
``documents`` (the signed documents, parsed after the signature), ``probes``
(enrollment, check-in, rotation, revocation), ``ingest`` (a batch of signed
measurements stored, one answer per item), ``targets`` and ``importers``
(target lists, directory imports through ``collector.netsafety``), ``geo``
(an address to a country and ASN, then forgotten), ``events`` (block events
and status as the API shows them), ``subscriptions`` (who is alerted),
``leases`` (which process runs the singleton loops).
"""
