"""What an alert says to a person, in the subscriber's language.

The webhook document stays machine-readable (codes, ISO times, AS numbers:
docs/admin-guide.md); chat channels, ntfy and the Mastodon direct message get
these few lines instead, and the webhook carries them as ``summary`` beside
the document. The words are the catalogs' (collector/core/i18n.py), the same
the pages use: an admin who follows the link reads the page in the language
of the alert.
"""

from __future__ import annotations

from typing import Any

from collector.core.i18n import DEFAULT_LANGUAGE, LANGUAGES, country_name, translations


def N_(message: str) -> str:  # gettext's name for "mark for the catalogs, translate later"
    return message


TITLES = {
    "block.opened": N_("Blocked"),
    "block.updated": N_("Block changed"),
    "block.closed": N_("Block ended"),
}
# Short words for a line of text; the pages explain each at length (macros.html).
METHODS = {
    "dns": N_("DNS poisoning"),
    "tcp_ip": N_("IP blocking"),
    "tls": N_("SNI blocking"),
    "http": N_("HTTP tampering"),
}
SCOPES = {"national": N_("nationwide"), "regional": N_("in some networks")}


def language(chosen: str | None) -> str:
    """The language an alert is written in: *chosen* when we have it, else English."""
    return chosen if chosen in LANGUAGES else DEFAULT_LANGUAGE


def _list(items: list[str], language: str) -> str:
    """Items of a list as a line shows them (``a, b`` / ``a、b``)."""
    return translations(language).gettext(", ").join(items) if items else "-"


def _time(value: object) -> str:
    """``2026-06-01 10:05 UTC`` from the document's ISO time (public times are rounded)."""
    text = str(value)
    return text[:16].replace("T", " ") + " UTC" if len(text) >= 16 else text


def title(document: dict[str, Any], chosen: str | None) -> str:
    """``Blocked: alive.bar (CN)``: a notification's title."""
    lang = language(chosen)
    _ = translations(lang).gettext
    data = document["data"]
    name = _(TITLES.get(document["type"], "Blockwatch"))
    return _("%(title)s: %(domain)s (%(cc)s)") % {
        "title": name,
        "domain": data["domain"],
        "cc": data["cc"],
    }


def summary(document: dict[str, Any], chosen: str | None) -> str:
    """A few lines an admin can act on: what, where, how, since when, what still works."""
    lang = language(chosen)
    strings = translations(lang)
    _ = strings.gettext
    data = document["data"]
    values = {
        "title": _(TITLES.get(document["type"], "Blockwatch")),
        "domain": data["domain"],
        "country": country_name(data["cc"], lang),
        "cc": data["cc"],
    }
    lines = [_("%(title)s: %(domain)s in %(country)s (%(cc)s)") % values]
    scope = _(SCOPES.get(str(data.get("scope")), "in some networks"))
    asns = [f"AS{a}" for a in data.get("asns") or []]
    if asns:
        where = _("Where: %(scope)s (%(networks)s)")
        lines.append(where % {"scope": scope, "networks": _list(asns, lang)})
    else:
        lines.append(_("Where: %(scope)s") % {"scope": scope})
    methods = [_(METHODS[m]) if m in METHODS else m for m in data.get("methods") or []]
    lines.append(_("How: %(methods)s") % {"methods": _list(methods, lang)})
    probes = int(data.get("probes") or 0)
    lines.append(
        strings.ngettext(
            "Since: %(time)s (seen by %(probes)d probe)",
            "Since: %(time)s (seen by %(probes)d probes)",
            probes,
        )
        % {"time": _time(data.get("started_at")), "probes": probes}
    )
    if data.get("ended_at"):
        lines.append(_("Ended: %(time)s") % {"time": _time(data["ended_at"])})
    working = [m["domain"] for m in data.get("mirrors", []) if m.get("state") == "ok"]
    if working:
        mirrors = _list(working, lang)
        lines.append(_("Mirrors that work there: %(mirrors)s") % {"mirrors": mirrors})
    if data.get("page_url"):
        url = f"{data['page_url']}?lang={lang}"
        lines.append(_("Details and evidence: %(url)s") % {"url": url})
    return "\n".join(lines)
