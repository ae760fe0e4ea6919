"""OONI's web_connectivity measurements, read as Blockwatch observations (no I/O).

OONI's volunteers measure with Web Connectivity (ooni/spec
``nettests/ts-017-web-connectivity.md``, data format 0.2.0: ``df-000-base``;
test versions 0.4.x and 0.5.x). Each measurement carries the probe's own steps
(``test_keys.queries``, ``tcp_connect``, ``tls_handshakes``, ``requests``:
``df-002-dnst``, ``df-005-tcpconnect``, ``df-006-tlshandshake``,
``df-001-httpt``) and what OONI's test helper saw from outside at the same
moment (``test_keys.control``). ``parse`` turns one into two records of
docs/measurement-format.md's shape, the probe's and the control's, which
``collector.analysis.analyze`` judges by the same rules as Blockwatch's own
(docs/methodology.md, "OONI measurements"). The failure strings are OONI's
already (``df-007-errors``): Blockwatch took them from there.

What OONI does not measure, the records do not claim:

- no decoy handshake: a handshake cut on a consistent address can only be
  judged against the control's (rule ``tls.handshake_cut``), never as
  ``tls.sni_filter``;
- OONI fetches the page, not the Mastodon API: an answer counts as "the
  instance's" (``mastodon`` in the record) when it is the control's: a 2xx
  for the control; for the probe, the control's status code and, when both
  have one, its page title;
- a 0.4 request names no address: it is the first address its port connected
  to (how the 0.4 dialler tries them), and without one the step is left out;
- ``getaddrinfo`` lookups (query type ``ANY``) are the system resolver's A and
  AAAA at once, read as an A query; Android's ``android_dns_cache_no_data``
  (EAI_NODATA, which Android's resolver also returns for NXDOMAIN) reads as
  ``dns_nxdomain_error``, as OONI's own analysis reads it (ooni/probe#2029);
- ``probe_ip`` is never read: attribution is ``probe_cc`` and ``probe_asn``.

Malformed input raises ``OONIFormatError`` with the field at fault; an OONI
measurement of another test is refused the same way.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from collector.analysis.reading import MALFORMED_FAILURE, canonical_ip
from probe_agent.protocol.vocabulary import Failure, Operation

TEST_NAME = "web_connectivity"
DATA_FORMAT = "0.2.0"
SUPPORTED_VERSIONS = ("0.4.", "0.5.")
DEFAULT_PORTS = {"https": 443, "http": 80}
_TITLE = re.compile(rb"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
_CERT_FAILURES = frozenset(
    {
        Failure.SSL_UNKNOWN_AUTHORITY.value,
        Failure.SSL_INVALID_HOSTNAME.value,
        Failure.SSL_INVALID_CERTIFICATE.value,
    }
)


class OONIFormatError(ValueError):
    """Not a web_connectivity measurement this reader understands; says which field."""


@dataclass(frozen=True, slots=True)
class OONIMeasurement:
    """One OONI measurement: where it comes from, what OONI concluded, and our records."""

    report_id: str
    measurement_uid: str | None  # added by OONI's pipeline; absent in a probe's own report
    input: str
    domain: str
    probe_cc: str
    probe_asn: int
    started_at: datetime  # aware UTC
    test_version: str
    blocking: str | bool | None  # OONI's: false, "dns", "tcp_ip", "http-failure", "http-diff"
    accessible: bool | None
    record: dict[str, Any]  # the probe's steps, docs/measurement-format.md
    control: dict[str, Any] | None  # the test helper's, None when OONI has no control
    control_failure: str | None
    asns: dict[str, int]  # address -> ASN, from the control's ip_info (0.5)

    def provenance(self) -> dict[str, Any]:
        """What finds it in OONI's public archive (instead of a Blockwatch signature)."""
        return {
            "source": "ooni",
            "report_id": self.report_id,
            "measurement_uid": self.measurement_uid,
            "input": self.input,
        }


def _dict(value: object, name: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise OONIFormatError(f"{name} must be an object")
    return value


def _obj(value: object) -> Mapping[str, Any]:
    """An object, or an empty one for anything else (a garbled step reads as absent)."""
    return value if isinstance(value, Mapping) else {}


def _list(value: object) -> list[Mapping[str, Any]]:
    """A list of objects (OONI 0.4 writes null for an empty list)."""
    if not isinstance(value, list):
        return []
    return [entry for entry in value if isinstance(entry, Mapping)]


def _text(doc: Mapping[str, Any], name: str) -> str:
    value = doc.get(name)
    if not isinstance(value, str) or not value:
        raise OONIFormatError(f"{name} must be a non-empty string")
    return value


def _seconds(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _failure(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


ANDROID_NO_DATA = "android_dns_cache_no_data"


def _dns_failure(value: object) -> str | None:
    failure = _failure(value)
    return Failure.DNS_NXDOMAIN.value if failure == ANDROID_NO_DATA else failure


def _status(value: object) -> int | None:
    """An HTTP status code (OONI writes -1, or 0, when there was none)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _endpoint(text: object) -> tuple[str, int] | None:
    """``1.2.3.4:443`` or ``[2001:db8::1]:443`` as (canonical ip, port)."""
    if not isinstance(text, str):
        return None
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        return None
    ip = canonical_ip(host.strip("[]"))
    return (ip, int(port)) if ip is not None else None


def parse_time(text: str, name: str) -> datetime:
    """OONI's ``YYYY-MM-DD HH:MM:SS`` (UTC, df-000-base)."""
    try:
        return datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    except ValueError:
        raise OONIFormatError(f"{name} must be YYYY-MM-DD HH:MM:SS (UTC): {text!r}") from None


def _asn(text: str) -> int:
    match = re.fullmatch(r"AS(\d{1,10})", text.strip(), re.IGNORECASE)
    if match is None:
        raise OONIFormatError(f"probe_asn must be AS<number>: {text!r}")
    return int(match.group(1))


def _iso(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def _title(body: object) -> str | None:
    if not isinstance(body, str) or not body:
        return None
    found = _TITLE.search(body.encode("utf-8", "replace"))
    if found is None:
        return None
    title = " ".join(html.unescape(found.group(1).decode("utf-8", "replace")).split())
    return title or None


def _same_host(url: object, domain: str) -> bool:
    if not isinstance(url, str):
        return False
    host = (urlsplit(url).hostname or "").rstrip(".").lower()
    return host == domain


def parse(doc: object) -> OONIMeasurement:
    """One OONI measurement (a parsed JSON object) as ``OONIMeasurement``."""
    doc = _dict(doc, "the measurement")
    if doc.get("test_name") != TEST_NAME:
        raise OONIFormatError(f"test_name must be {TEST_NAME!r}, not {doc.get('test_name')!r}")
    version = _text(doc, "test_version")
    if not version.startswith(SUPPORTED_VERSIONS):
        raise OONIFormatError(f"test_version {version!r}: only 0.4.x and 0.5.x are read")
    fmt = doc.get("data_format_version")
    if fmt is not None and fmt != DATA_FORMAT:
        raise OONIFormatError(f"data_format_version {fmt!r}: only {DATA_FORMAT} is read")
    url = _text(doc, "input")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        raise OONIFormatError(f"input must be an http:// or https:// URL: {url!r}")
    domain = parts.hostname.rstrip(".").lower()
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError:
        raise OONIFormatError(f"input has an invalid port: {url!r}") from None
    cc = _text(doc, "probe_cc").upper()
    if not re.fullmatch(r"[A-Z]{2}", cc):
        raise OONIFormatError(f"probe_cc must be two letters: {cc!r}")
    started = parse_time(_text(doc, "measurement_start_time"), "measurement_start_time")
    keys = _dict(doc.get("test_keys"), "test_keys")
    uid = doc.get("measurement_uid")
    control = keys.get("control")
    control_failure = _failure(keys.get("control_failure"))
    blocking = keys.get("blocking")
    accessible = keys.get("accessible")
    asns = _ip_info(control)
    probe = _probe_record(keys, domain, scheme, port, started)
    return OONIMeasurement(
        report_id=_text(doc, "report_id"),
        measurement_uid=uid if isinstance(uid, str) and uid else None,
        input=url,
        domain=domain,
        probe_cc=cc,
        probe_asn=_asn(_text(doc, "probe_asn")),
        started_at=started,
        test_version=version,
        blocking=blocking if isinstance(blocking, str | bool) else None,
        accessible=accessible if isinstance(accessible, bool) else None,
        record=probe,
        control=(
            None
            if control_failure is not None or not isinstance(control, Mapping)
            else _control_record(control, domain, scheme, port, started)
        ),
        control_failure=control_failure,
        asns=asns,
    )


def _ip_info(control: object) -> dict[str, int]:
    info = control.get("ip_info") if isinstance(control, Mapping) else None
    found: dict[str, int] = {}
    if isinstance(info, Mapping):
        for address, entry in info.items():
            ip = canonical_ip(address)
            asn = entry.get("asn") if isinstance(entry, Mapping) else None
            if ip is not None and isinstance(asn, int) and not isinstance(asn, bool) and asn > 0:
                found[ip] = asn
    return found


def _header(scheme: str, port: int, domain: str, started: datetime) -> dict[str, Any]:
    return {
        "domain": domain,
        "scheme": scheme,
        "port": port,
        "started_at": _iso(started),
        "software": {"name": "ooni web_connectivity"},
        "decoy_sni": None,
        "hints": [],
    }


def _probe_record(
    keys: Mapping[str, Any], domain: str, scheme: str, port: int, started: datetime
) -> dict[str, Any]:
    record = _header(scheme, port, domain, started)
    record["dns"] = [
        {
            "resolver": q.get("resolver_address") or q.get("engine") or "system",
            "transport": q.get("engine"),
            # getaddrinfo asks A and AAAA at once (OONI's query_type "ANY")
            "query_type": "A" if q.get("query_type") == "ANY" else q.get("query_type"),
            "answers": [
                a.get("ipv4") or a.get("ipv6")
                for a in _list(q.get("answers"))
                if a.get("answer_type") in ("A", "AAAA")
            ],
            "failure": _dns_failure(q.get("failure")),
            "responses": 0 if _failure(q.get("failure")) is not None else 1,
            "responses_agree": True,
            "injection_sink": False,
        }
        for q in _list(keys.get("queries"))
        if str(q.get("hostname", domain)).rstrip(".").lower() == domain
        and q.get("query_type") in ("A", "AAAA", "ANY")
    ]
    tcp = []
    connected: list[tuple[str, int]] = []
    for entry in _list(keys.get("tcp_connect")):
        ip = canonical_ip(entry.get("ip"))
        if ip is None or not isinstance(entry.get("port"), int):
            continue
        status = _obj(entry.get("status"))
        failure = _failure(status.get("failure"))
        if failure is None and status.get("success") is not True:
            failure = MALFORMED_FAILURE  # neither a success nor a failure: matches no rule
        tcp.append(
            {
                "ip": ip,
                "port": entry["port"],
                "failure": failure,
                "failed_operation": Operation.CONNECT.value if failure else None,
                "t0": _seconds(entry.get("t0")),
                "t": _seconds(entry.get("t")),
            }
        )
        if failure is None:
            connected.append((ip, entry["port"]))
    record["tcp"] = tcp
    record["tls"] = [
        {
            "ip": address[0],
            "port": address[1],
            "sni": domain,
            "decoy": False,
            "failure": _failure(h.get("failure")),
            "failed_operation": (
                Operation.TLS_HANDSHAKE.value if _failure(h.get("failure")) else None
            ),
            "cert_valid": _cert_valid(h),
            "t0": _seconds(h.get("t0")),
            "t": _seconds(h.get("t")),
        }
        for h in _list(keys.get("tls_handshakes"))
        if (address := _endpoint(h.get("address"))) is not None
        and str(h.get("server_name") or domain).rstrip(".").lower() == domain
    ]
    record["http"] = _probe_http(keys, domain, connected)
    return record


def _cert_valid(handshake: Mapping[str, Any]) -> bool | None:
    failure = _failure(handshake.get("failure"))
    if failure in _CERT_FAILURES:
        return False
    if failure is None and handshake.get("no_tls_verify") is not True:
        return True
    return None


def _probe_http(
    keys: Mapping[str, Any], domain: str, connected: list[tuple[str, int]]
) -> list[dict[str, Any]]:
    wanted = _obj(_obj(keys.get("control")).get("http_request"))
    steps = []
    # OONI lists the requests last first (df-001-httpt): the first one made is last.
    for entry in reversed(_list(keys.get("requests"))):
        request = _obj(entry.get("request"))
        if not _same_host(request.get("url"), domain):
            continue  # a redirect elsewhere: that host's answer, not the instance's
        url_port = _url_port(request.get("url"))
        address = _endpoint(entry.get("address"))
        if address is None:  # 0.4: the first address its port connected to
            address = next((a for a in connected if a[1] == url_port), None)
        if address is None:
            continue
        response = _obj(entry.get("response"))
        code = _status(response.get("code"))
        failure = _failure(entry.get("failure"))
        steps.append(
            {
                "ip": address[0],
                "port": address[1],
                "failure": failure,
                "failed_operation": Operation.HTTP_TRANSACTION.value if failure else None,
                "status_code": code,
                "mastodon": failure is None and _same_answer(code, response, wanted),
                "instance_domain": None,
                "t0": _seconds(entry.get("t0")),
                "t": _seconds(entry.get("t")),
            }
        )
    return steps


def _url_port(url: object) -> int | None:
    if not isinstance(url, str):
        return None
    parts = urlsplit(url)
    try:
        return parts.port or DEFAULT_PORTS.get(parts.scheme.lower())
    except ValueError:
        return None


def _same_answer(code: int | None, response: Mapping[str, Any], control: Mapping[str, Any]) -> bool:
    """The probe's answer is the one the control got: its 2xx status code, and its page
    title when both have one. A redirect the control followed (3xx) is not an answer
    yet: the request it leads to is judged on its own."""
    expected = control.get("status_code")
    if not isinstance(expected, int) or not 200 <= expected < 300 or code != expected:
        return False
    theirs = control.get("title")
    ours = _title(response.get("body"))
    if isinstance(theirs, str) and theirs.strip() and ours is not None:
        return " ".join(theirs.split()) == ours
    return True


def _control_record(
    control: Mapping[str, Any], domain: str, scheme: str, port: int, started: datetime
) -> dict[str, Any]:
    """The test helper's view (df-002 control), as a control measurement of ours."""
    record = _header(scheme, port, domain, started)
    dns = _obj(control.get("dns"))
    addrs = dns.get("addrs")
    record["dns"] = [
        {
            "resolver": "ooni-test-helper",
            "transport": "udp",
            "query_type": "A",
            "answers": [a for a in addrs if isinstance(a, str)] if isinstance(addrs, list) else [],
            "failure": _failure(dns.get("failure")),
            "responses": 1,
            "responses_agree": True,
            "injection_sink": False,
        }
    ]
    tcp = []
    connected: list[tuple[str, int]] = []
    for address, failure in _helper_steps(control.get("tcp_connect")):
        tcp.append({"ip": address[0], "port": address[1], "failure": failure,
                    "failed_operation": Operation.CONNECT.value if failure else None})  # fmt: skip
        if failure is None:
            connected.append(address)
    record["tcp"] = tcp
    if not connected:  # the helper fetched the page from addresses of its own lookup
        answers = record["dns"][0]["answers"]
        connected = [(ip, port) for ip in map(canonical_ip, answers) if ip is not None]
    http = _obj(control.get("http_request"))
    code = _status(http.get("status_code"))
    http_failure = _failure(http.get("failure"))
    tls = []
    raw_tls = _obj(control.get("tls_handshake"))
    if raw_tls:  # 0.5: per address
        for address, failure in _helper_steps(raw_tls):
            tls.append(_control_tls(address, domain, failure))
    elif scheme == "https" and connected:  # 0.4: the fetch's outcome, on its first address
        tls.append(_control_tls(connected[0], domain, http_failure if code is None else None))
    record["tls"] = tls
    reached = [(s["ip"], s["port"]) for s in tls if s["failure"] is None] or connected
    record["http"] = (
        [
            {
                "ip": reached[0][0],
                "port": reached[0][1],
                "failure": http_failure,
                "failed_operation": Operation.HTTP_TRANSACTION.value if http_failure else None,
                "status_code": code,
                "mastodon": http_failure is None and code is not None and 200 <= code < 300,
                "instance_domain": None,
            }
        ]
        if reached and (code is not None or http_failure is not None)
        else []
    )
    return record


def _helper_steps(steps: object) -> Iterator[tuple[tuple[str, int], str | None]]:
    """The test helper's ``{"ip:port": {"status", "failure"}}`` (its tcp_connect and,
    in 0.5, tls_handshake): each address and its failure (None: it worked)."""
    for address_text, status in _obj(steps).items():
        address = _endpoint(address_text)
        if address is None or not isinstance(status, Mapping):
            continue
        failure = _failure(status.get("failure"))
        if failure is None and status.get("status") is not True:
            failure = Failure.GENERIC_TIMEOUT.value
        yield address, failure


def _control_tls(address: tuple[str, int], domain: str, failure: str | None) -> dict[str, Any]:
    return {
        "ip": address[0],
        "port": address[1],
        "sni": domain,
        "decoy": False,
        "failure": failure,
        "failed_operation": Operation.TLS_HANDSHAKE.value if failure else None,
        "cert_valid": False if failure in _CERT_FAILURES else (True if failure is None else None),
    }
