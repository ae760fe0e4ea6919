"""Target lists from files and instance directories: parsing and fetching, no database.

Where this sits in the data flow: an admin seeds or grows the collector's list
of targets (the domains that probes and the control prober measure) with
``blockwatch-collector targets import FILE|URL [--language zh]``. The command
calls ``load_targets``, which reads a file or fetches a directory
(``fetch_directory``) and hands the bytes to ``parse_targets``; storing the
result is the caller's business.

``parse_targets`` recognises, from the bytes alone:

- CSV with a header row that has a ``domain`` column (other columns ignored);
- plain text, one domain a line (blank lines and ``#`` comments ignored);
- the joinmastodon.org servers API: a JSON list of objects with ``domain``,
  ``language`` and ``languages``;
- a Fediverse Observer export: a JSON list of objects with ``domain`` and
  ``detectedlanguage``, bare or under ``nodes`` / ``data`` / ``data.nodes``
  (the GraphQL answer).

Every domain goes through ``probe_agent.protocol.inputs.normalize_domain`` (IDNA 2008,
punycode). A bad entry is skipped with its reason and never stops the import;
duplicates are merged. ``fetch_directory`` refuses, unless told otherwise, hosts
that are or resolve to non-public addresses, and connects to exactly the
addresses it checked (no DNS-rebinding window): the guard is
``collector.netsafety``'s, the one of every outbound request.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import aiohttp
from yarl import URL

from collector import __version__
from collector.netsafety import GuardedResolver, Unresolvable, UnsafeDestination
from probe_agent.protocol.addresses import ALL_ADDRESSES, IPAddress
from probe_agent.protocol.errors import InvalidDomainError
from probe_agent.protocol.inputs import normalize_domain

NO_LANGUAGE = "no language"
MAX_REDIRECTS = 5
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_CSV_DELIMITERS = (",", "\t", ";")
_JSON_LIST_PATHS = (("data", "nodes"), ("nodes",), ("data",))
_LANGUAGE_KEYS = ("language", "languages", "detectedlanguage")
_LANGUAGE_TAG = re.compile(r"[a-z]{2,8}(?:-[a-z0-9]{1,8})*")
_PRIMARY_SUBTAG = re.compile(r"[a-z]{2,8}")
_EXPECTED = (
    "expected CSV with a 'domain' column, one domain a line, or a JSON list of objects "
    "with 'domain' (joinmastodon servers API, Fediverse Observer)"
)

# (raw value, language tags, why it cannot be imported or None)
_RawEntry: TypeAlias = tuple[str, list[str], str | None]


class FetchError(OSError):
    """A directory could not be fetched: name resolution, connection, timeout or HTTP status.

    An ``OSError``, like a file that cannot be read: the caller handles both alike.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class RefusedAddressError(ValueError):
    """The URL's host is, or resolves to, a loopback, private, link-local or reserved address."""


@dataclass(frozen=True)
class ImportedTarget:
    domain: str  # normalized: lower-case ASCII (punycode)
    languages: tuple[str, ...] = ()  # BCP 47 tags as the source gave them, canonical case


@dataclass
class ImportResult:
    targets: list[ImportedTarget]
    skipped: list[tuple[str, str]]  # (raw value, reason)
    format: str = ""  # "csv", "text" or "json"
    # Entries that carry language information but none matching the filter: left
    # out silently (a full directory has thousands), but counted.
    filtered_out: int = 0

    @property
    def domains(self) -> list[str]:
        return [t.domain for t in self.targets]


@dataclass
class _Entry:
    raw: str
    languages: list[str] = field(default_factory=list)


# -- parsing -------------------------------------------------------------------------------


def parse_targets(
    data: bytes, *, language: str | None = None, source_name: str = ""
) -> ImportResult:
    """Parse a target list in any supported format; ``language`` keeps one primary subtag."""
    where = f"{source_name}: " if source_name else ""
    wanted = _language_filter(language) if language is not None else None
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{where}not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    stripped = text.lstrip()
    if not stripped:
        raise ValueError(f"{where}empty input; {_EXPECTED}")
    if stripped[0] in "[{":
        return _collect(_json_entries(stripped, where), wanted, "json")
    if stripped[0] == "<":
        raise ValueError(f"{where}looks like HTML or XML; {_EXPECTED}")
    delimiter = _csv_delimiter(text, where)
    fmt = "text" if delimiter is None else "csv"
    if wanted is not None:
        raise ValueError(
            f"{where}a {'CSV file' if fmt == 'csv' else 'plain list'} carries no language "
            "information, so it cannot be filtered by language; drop the language filter "
            "or import a directory export (joinmastodon, Fediverse Observer)"
        )
    entries = _text_entries(text) if delimiter is None else _csv_entries(text, delimiter)
    return _collect(((raw, [], None) for raw in entries), None, fmt)


def _language_filter(language: str) -> str:
    wanted = language.strip().lower()
    if not _PRIMARY_SUBTAG.fullmatch(wanted):
        raise ValueError(
            f"invalid language filter {language!r}: give a primary language subtag such as "
            "'zh' (it matches zh, zh-CN, zh-Hant, ...)"
        )
    return wanted


def _meaningful_lines(text: str) -> Iterator[str]:
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            yield line


def _csv_delimiter(text: str, where: str) -> str | None:
    """The delimiter of a CSV header row with a ``domain`` column, or None for plain text."""
    first = next(_meaningful_lines(text), None)
    if first is None:  # nothing but comments
        return None
    for delimiter in _CSV_DELIMITERS:
        cells = next(csv.reader([first], delimiter=delimiter))
        if "domain" in (c.strip().lower() for c in cells):
            return delimiter
    if "," in first or "\t" in first or ";" in first:
        raise ValueError(f"{where}a CSV header without a 'domain' column: {first.strip()!r}")
    return None


def _text_entries(text: str) -> Iterator[str]:
    for line in text.splitlines():
        # A domain never contains '#', so everything after one is a comment.
        raw = line.split("#", 1)[0].strip()
        if raw:
            yield raw


def _csv_entries(text: str, delimiter: str) -> Iterator[str]:
    column: int | None = None
    for row in csv.reader(io.StringIO(text), delimiter=delimiter):
        if not any(cell.strip() for cell in row) or row[0].lstrip().startswith("#"):
            continue
        if column is None:
            column = [c.strip().lower() for c in row].index("domain")
            continue
        yield row[column].strip() if column < len(row) else ""


def _json_entries(text: str, where: str) -> Iterator[_RawEntry]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}not valid JSON ({exc}); {_EXPECTED}") from exc
    items = _json_items(doc, where)
    if items and not any(isinstance(i, dict) and "domain" in i for i in items):
        raise ValueError(f"{where}no object in the JSON list has a 'domain' field; {_EXPECTED}")
    return _json_item_entries(items)


def _json_items(doc: list[Any] | dict[str, Any], where: str) -> list[Any]:
    """The list of instances: the document itself, or under one of ``_JSON_LIST_PATHS``."""
    if isinstance(doc, list):
        return doc
    for path in _JSON_LIST_PATHS:
        node: Any = doc
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, list):
            return node
    if doc.get("errors"):  # a GraphQL answer that carries errors and no data
        raise ValueError(f"{where}the directory answered with errors: {doc['errors']!r:.300}")
    keys = ", ".join(sorted(doc)[:10])
    raise ValueError(
        f"{where}a JSON object with keys {keys or '(none)'} and no list of instances "
        f"under 'nodes', 'data' or 'data.nodes'; {_EXPECTED}"
    )


def _json_item_entries(items: list[Any]) -> Iterator[_RawEntry]:
    for item in items:
        domain = item.get("domain") if isinstance(item, dict) else None
        if not isinstance(domain, str):
            yield f"{item!r:.100}", [], "not an object with a 'domain' string"
            continue
        languages: list[str] = []
        for key in _LANGUAGE_KEYS:
            value = item.get(key)
            for raw in value if isinstance(value, list) else [value]:
                tag = _language_tag(raw)
                if tag is not None and tag not in languages:
                    languages.append(tag)
        yield domain, languages, None


def _language_tag(raw: object) -> str | None:
    """``zh_cn`` -> ``zh-CN``, ``zh-hant`` -> ``zh-Hant``; None for no usable tag."""
    if not isinstance(raw, str):
        return None
    text = raw.strip().replace("_", "-").lower()
    if not _LANGUAGE_TAG.fullmatch(text) or text == "und":  # und: "undetermined"
        return None
    primary, *rest = text.split("-")
    for i, sub in enumerate(rest):
        if len(sub) == 4 and sub.isalpha():
            rest[i] = sub.title()
        elif len(sub) == 2 and sub.isalpha():
            rest[i] = sub.upper()
    return "-".join([primary, *rest])


def _collect(entries: Iterable[_RawEntry], wanted: str | None, fmt: str) -> ImportResult:
    merged: dict[str, _Entry] = {}
    skipped: list[tuple[str, str]] = []
    for raw, languages, problem in entries:
        if problem is not None:
            skipped.append((raw, problem))
            continue
        try:
            domain = normalize_domain(raw)
        except InvalidDomainError as exc:
            skipped.append((raw, str(exc)))
            continue
        entry = merged.setdefault(domain, _Entry(raw))
        entry.languages.extend(t for t in languages if t not in entry.languages)
    result = ImportResult(targets=[], skipped=skipped, format=fmt)
    for domain, entry in merged.items():
        if wanted is not None and not entry.languages:
            skipped.append((entry.raw, NO_LANGUAGE))
        elif wanted is not None and all(_primary(t) != wanted for t in entry.languages):
            result.filtered_out += 1
        else:
            result.targets.append(ImportedTarget(domain, tuple(entry.languages)))
    return result


def _primary(tag: str) -> str:
    return tag.split("-", 1)[0].lower()


# -- fetching ------------------------------------------------------------------------------


async def _check_host(resolver: GuardedResolver, host: str) -> list[IPAddress]:
    """Resolve *host* once, check every address it has and pin them (``collector.netsafety``)."""
    try:
        return await resolver.check(host)
    except Unresolvable as exc:
        raise FetchError(f"cannot resolve {host}: no address") from exc
    except UnsafeDestination as exc:
        shown = host if host == str(exc.address) else f"{host} ({exc.address})"
        raise RefusedAddressError(
            f"refusing to fetch from {shown}: a {exc.reason} address; "
            "only public addresses are fetched from unless private ones are allowed"
        ) from exc
    except socket.gaierror as exc:
        raise FetchError(f"cannot resolve {host}: {exc.strerror}") from exc


def _http_url(url: URL) -> tuple[str, int]:
    if url.scheme not in ("http", "https") or not url.raw_host or url.port is None:
        raise ValueError(f"unsupported URL {str(url)!r}: expected http:// or https:// and a host")
    return url.raw_host, url.port


async def _read_capped(resp: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    too_large = f"{resp.url}: the answer is larger than the limit of {max_bytes} bytes"
    if resp.content_length is not None and resp.content_length > max_bytes:
        raise ValueError(too_large)
    body = bytearray()
    # Counted after decompression: a small gzip body can expand without bound.
    async for chunk in resp.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > max_bytes:
            raise ValueError(too_large)
    return bytes(body)


async def _get(
    session: aiohttp.ClientSession, resolver: GuardedResolver, url: URL, *, max_bytes: int
) -> bytes:
    # Redirects are followed here, not by aiohttp, so that every hop's host is
    # checked; aiohttp would also dial an IP literal without asking any resolver.
    for _ in range(MAX_REDIRECTS + 1):
        host, _port = _http_url(url)
        if resolver.pinned(host) is None:
            await _check_host(resolver, host)
        async with session.get(url, allow_redirects=False) as resp:
            if resp.status in _REDIRECT_STATUSES:
                location = resp.headers.get("Location", "")
                try:
                    url = resp.url.join(URL(location)) if location else URL()
                except ValueError:
                    url = URL()
                if url.scheme not in ("http", "https") or not url.raw_host:
                    raise FetchError(
                        f"{resp.url}: HTTP {resp.status} without a usable http(s) Location",
                        status=resp.status,
                    )
                continue
            if not 200 <= resp.status < 300:
                raise FetchError(f"{resp.url}: HTTP {resp.status}", status=resp.status)
            return await _read_capped(resp, max_bytes)
    raise FetchError(f"more than {MAX_REDIRECTS} redirects")


async def fetch_directory(
    url: str,
    *,
    max_bytes: int = 20 * 1024 * 1024,
    timeout: float = 30.0,
    allow_private: bool = False,
) -> bytes:
    """GET *url* (http/https) and return the body, at most *max_bytes* after decompression.

    Raises ``ValueError`` for an unsupported URL or a body over the limit,
    ``RefusedAddressError`` (a ``ValueError``) for a non-public host unless
    *allow_private*, and ``FetchError`` for everything the network or the server
    did wrong (``status`` set for an HTTP status outside 2xx).
    """
    parsed = URL(url)
    _http_url(parsed)
    resolver = GuardedResolver(ALL_ADDRESSES if allow_private else ())
    # trust_env=False: an environment proxy would connect to the host for us,
    # past the address check.
    connector = aiohttp.TCPConnector(resolver=resolver, use_dns_cache=False)
    headers = {
        "User-Agent": f"blockwatch-collector/{__version__}",
        "Accept": "application/json, text/csv, text/plain;q=0.9, */*;q=0.1",
    }
    try:
        async with (
            asyncio.timeout(timeout),
            aiohttp.ClientSession(
                connector=connector,
                headers=headers,
                trust_env=False,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as session,
        ):
            return await _get(session, resolver, parsed, max_bytes=max_bytes)
    except TimeoutError as exc:
        raise FetchError(f"{url}: no complete answer within {timeout:g} s") from exc
    except aiohttp.ClientError as exc:
        raise FetchError(f"{url}: {exc}") from exc


async def load_targets(
    source: str, *, language: str | None = None, allow_private: bool = False
) -> ImportResult:
    """Read *source*, a file path or an http(s) URL, and parse it with ``parse_targets``."""
    if re.match(r"(?i)https?://", source):
        data = await fetch_directory(source, allow_private=allow_private)
    elif "://" in source:
        raise ValueError(f"unsupported source {source!r}: expected a file path or an http(s) URL")
    else:
        data = await asyncio.to_thread(Path(source).read_bytes)
    return parse_targets(data, language=language, source_name=source)
