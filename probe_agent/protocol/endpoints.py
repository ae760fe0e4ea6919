"""The collector's signed list of endpoints: other ways in, handed out at check-in.

Where this sits in the data flow: the collector (``collector.services.reachability``)
signs the list of its base URLs with its own key (``/.well-known/blockwatch.json``)
and puts it in every check-in answer; the probe (``probe_agent.daemon.client``)
verifies it against the collector key it has anchored (a fingerprint carried in
its enrollment token, or the key it met at its first enrollment), keeps it in its
state and tries those URLs when its ``--collector`` URLs fail. The signature is
what stops a censor, or anyone between the probe and a collector it reached
once, from handing the probe endpoints of their own: a list that does not verify
is refused whole, and an older list never replaces a newer one.

An endpoint is a base URL, optionally with:

- ``address``: the address to connect to instead of resolving the URL's name (a
  second address of the collector, when its name is poisoned);
- ``sni``: the name sent in the TLS ClientHello instead of the URL's, for a front
  the operator runs that answers any SNI with the collector's certificate. The
  certificate is still verified against the URL's host name, and the HTTP Host
  is the URL's: a front of someone else's (a CDN's "domain fronting") is not
  what this is, and does not work with it.

Wire form (the check-in answer's ``endpoints``)::

    {"format": "blockwatch-endpoints/1", "collector_public_key": "<base64 raw>",
     "document": "<base64 of the signed bytes>", "signature": "<base64>"}

and the document, JSON: ``{"format", "collector_key_id", "issued_at",
"endpoints": [{"url", "address", "sni"}]}``, signed over
``b"blockwatch/v1/endpoints\\n" + document``.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from probe_agent.protocol.envelope import (
    ENVELOPE_VERSION,
    PUBLIC_KEY_BYTES,
    b64_field,
    b64encode,
    fingerprint,
)
from probe_agent.protocol.errors import InvalidDomainError, InvalidOptionError
from probe_agent.protocol.inputs import normalize_domain, parse_collector_url
from probe_agent.protocol.times import parse_rfc3339

FORMAT = "blockwatch-endpoints/1"
PREFIX = f"blockwatch/v{ENVELOPE_VERSION}/endpoints\n".encode()
MAX_ENDPOINTS = 32
MAX_DOCUMENT_BYTES = 16 * 1024


class EndpointsError(ValueError):
    """A list that is malformed, not signed by the anchored key, or older than the one kept."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    url: str  # a base URL, as parse_collector_url gives it
    address: str | None = None  # connect here instead of resolving the URL's host
    sni: str | None = None  # the ClientHello's name, for the operator's own front

    def to_json(self) -> dict[str, Any]:
        return {"url": self.url, "address": self.address, "sni": self.sni}

    @property
    def kind(self) -> str:
        """``onion``, ``front`` (an SNI of its own), ``address``, or ``direct``."""
        if (urlsplit(self.url).hostname or "").lower().endswith(".onion"):
            return "onion"
        if self.sni is not None:
            return "front"
        return "address" if self.address is not None else "direct"

    def text(self) -> str:
        """The ``--endpoint`` spelling (``parse`` reads it back)."""
        options = [f"{n}={v}" for n, v in (("address", self.address), ("sni", self.sni)) if v]
        return ";".join([self.url, *options])

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        """``URL[;address=IP][;sni=NAME]`` (the collector's ``--endpoint``)."""
        url, *options = (part.strip() for part in text.split(";"))
        fields: dict[str, str] = {}
        for option in options:
            name, _, value = option.partition("=")
            if name not in ("address", "sni") or not value or name in fields:
                raise InvalidOptionError(
                    f"invalid endpoint {text!r}: options are ;address=IP and ;sni=NAME"
                )
            fields[name] = value
        return cls.from_json({"url": url, **fields})

    @classmethod
    def from_json(cls, data: Any) -> Endpoint:
        if not isinstance(data, dict) or not isinstance(data.get("url"), str):
            raise InvalidOptionError("an endpoint is an object with a url")
        url = parse_collector_url(data["url"])
        address, sni = data.get("address"), data.get("sni")
        if address is not None:
            if not isinstance(address, str):
                raise InvalidOptionError(f"invalid endpoint address {address!r}")
            try:
                address = str(ipaddress.ip_address(address))
            except ValueError:
                raise InvalidOptionError(f"invalid endpoint address {address!r}") from None
        if sni is not None:
            if not isinstance(sni, str):
                raise InvalidOptionError(f"invalid endpoint sni {sni!r}")
            try:
                sni = normalize_domain(sni)
            except InvalidDomainError as exc:
                raise InvalidOptionError(f"invalid endpoint sni: {exc}") from None
            if not url.startswith("https://"):
                raise InvalidOptionError("an endpoint's sni needs an https:// URL")
        return cls(url, address, sni)


@dataclass(frozen=True, slots=True)
class EndpointList:
    collector_key_id: str
    issued_at: str  # RFC 3339 UTC: a newer list replaces an older one, never the reverse
    endpoints: tuple[Endpoint, ...]

    def issued(self) -> datetime:
        return parse_rfc3339(self.issued_at)

    def document(self) -> bytes:
        return json.dumps(
            {
                "format": FORMAT,
                "collector_key_id": self.collector_key_id,
                "issued_at": self.issued_at,
                "endpoints": [e.to_json() for e in self.endpoints],
            },
            separators=(",", ":"),
            sort_keys=True,
        ).encode()


def signed(
    endpoints: EndpointList, public_key: bytes, sign: Callable[[bytes, bytes], bytes]
) -> dict[str, str]:
    """The wire form; *sign(prefix, message)* is the collector key's."""
    document = endpoints.document()
    return {
        "format": FORMAT,
        "collector_public_key": b64encode(public_key),
        "document": b64encode(document),
        "signature": b64encode(sign(PREFIX, document)),
    }


def verify(answer: Any, anchored_key_id: str) -> tuple[EndpointList, bytes]:
    """The list an answer carries, verified against *anchored_key_id*; with the
    collector's public key. Raises EndpointsError naming what is wrong."""
    if not isinstance(answer, dict) or answer.get("format") != FORMAT:
        raise EndpointsError(f"not a {FORMAT} list")
    public = _b64decode(answer, "collector_public_key")
    if len(public) != PUBLIC_KEY_BYTES or fingerprint(public) != anchored_key_id:
        raise EndpointsError("signed by another key than the collector's anchored key")
    document = _b64decode(answer, "document")
    if len(document) > MAX_DOCUMENT_BYTES:
        raise EndpointsError("the list is too large")
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(
            _b64decode(answer, "signature"), PREFIX + document
        )
    except (InvalidSignature, ValueError):
        raise EndpointsError("the signature does not verify") from None
    return parse_document(document, anchored_key_id), public


def parse_document(document: bytes, key_id: str) -> EndpointList:
    """A signed document's list (already verified, or read back from the probe's state)."""
    try:
        data = json.loads(document)
    except (ValueError, UnicodeDecodeError):
        raise EndpointsError("the document is not JSON") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise EndpointsError(f"the document is not a {FORMAT} list")
    if data.get("collector_key_id") != key_id:
        raise EndpointsError("the document names another collector key")
    issued_at, items = data.get("issued_at"), data.get("endpoints")
    if not isinstance(items, list) or len(items) > MAX_ENDPOINTS:
        raise EndpointsError(f"endpoints is a list of at most {MAX_ENDPOINTS}")
    try:
        if not isinstance(issued_at, str):
            raise ValueError
        parse_rfc3339(issued_at)
        endpoints = tuple(Endpoint.from_json(item) for item in items)
    except (InvalidOptionError, ValueError) as exc:
        raise EndpointsError(f"a malformed list: {exc}") from None
    return EndpointList(key_id, issued_at, endpoints)


def _b64decode(data: dict[str, Any], name: str) -> bytes:
    return b64_field(data, name, EndpointsError)
