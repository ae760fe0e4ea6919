"""The probe's exception tree: raised for bad input or our own faults, never for network events.

A network that resets, times out or lies is data (see ``failures``); these
exceptions mean the measurement cannot be made or must not be submitted.

    ProbeError
    +-- InvalidInputError         bad user input: exit status 2 at the CLI
        +-- InvalidDomainError    not a valid (IDNA) host name
        +-- InvalidResolverError  not IP[:PORT]
        +-- InvalidOptionError    any other out-of-range option
    +-- LocalResourceError        the probe's own machine ran short (EMFILE, ENOMEM):
                                  the measurement is not submitted
    +-- IdentityError             the key or state file is unsafe or unreadable: exit 2
    +-- CollectorUnreachable      no collector URL answered at all (refused, timeout, TLS)
    +-- CollectorRefused          a collector answered with an error (docs/api.md "Errors")

A message is an English template with named placeholders and their values
(``InvalidOptionError(N_("invalid ASN %(asn)s"), asn=asn)``): ``str(error)`` is
the English, and the CLI shows it in the volunteer's language
(``probe_agent.protocol.messages``).
"""

from __future__ import annotations

from typing import Any

from probe_agent.protocol.messages import Message


class ProbeError(Exception):
    """Base class of every error the probe raises on purpose."""

    def __init__(self, template: str = "", /, **params: Any) -> None:
        message = template if isinstance(template, Message) and not params else None
        super().__init__(message or Message(template, **params))


class InvalidInputError(ProbeError):
    """The input cannot be measured; nothing was sent."""


class InvalidDomainError(InvalidInputError):
    pass


class InvalidResolverError(InvalidInputError):
    pass


class InvalidOptionError(InvalidInputError):
    pass


class LocalResourceError(ProbeError):
    """Too many open files, no memory: a fault of the probe's host, not the network's."""


class IdentityError(ProbeError):
    """The probe's key or state cannot be used safely (wrong mode, corrupt, unreadable)."""


class CollectorUnreachable(ProbeError):
    """No collector answered: every URL failed to connect, timed out or broke the connection."""


class CollectorRefused(ProbeError):
    """A collector answered ``{"error": {"code", "message"}}`` (or something not in docs/api.md).

    Named apart from the collector's own ``collector.core.errors.CollectorError``
    (the base of the errors it raises): this is the probe hearing one of them.

    ``code`` is the collector's stable code (``err_invalid_token``...), or
    ``err_bad_response`` (client side) when the answer is not what docs/api.md says.
    """

    def __init__(
        self, status: int, code: str, message: str, *, retry_after: float | None = None
    ) -> None:
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after
