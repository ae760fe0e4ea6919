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
"""


class ProbeError(Exception):
    """Base class of every error the probe raises on purpose."""


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
