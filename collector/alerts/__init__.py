"""Alerts: block events delivered to instance admins through a durable outbox.

``signing`` (Standard Webhooks and X-Hub-Signature-256), ``channels``
(one message per channel format), ``outbox`` (fan-out of event changes,
claiming, sending, retries), ``verify`` (proof that a subscriber controls the
domain). Every request goes through ``collector.netsafety`` (no private ranges,
no DNS-rebinding gap).
"""
