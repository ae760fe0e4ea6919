"""The collector's settings: one pydantic-settings class, read from ``BLOCKWATCH_*``.

Every setting is declared here once: type, default, bounds and help text (the
field's ``description``). Fields marked ``Cli(...)`` are also options of
``blockwatch-collector serve``, derived from this class by
``collector/cli/options.py``; the others are settings only (environment).
Built once by the CLI (command-line options override the environment) and
handed to the app, which provides it to routes through a dependency; never
instantiated at import time. ``serve --workers N`` hands the built settings to
its worker processes whole (``export`` / ``from_environment``). It refuses to
start with a placeholder admin token unless the collector runs in the lab or
demo mode.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import pydantic_core
from pydantic import BeforeValidator, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from probe_agent.protocol.endpoints import Endpoint
from probe_agent.protocol.errors import InvalidDomainError, InvalidOptionError
from probe_agent.protocol.inputs import (
    normalize_domain,
    parse_collector_url,
    parse_duration,
    parse_network,
)

PLACEHOLDER_TOKENS = frozenset(
    {"", "changeme", "change-me", "admin", "secret", "password", "token", "test", "xxx"}
)
MIN_ADMIN_TOKEN_LENGTH = 24
# Private: `serve --workers N` puts the settings it built here for its workers.
WORKER_SETTINGS_VARIABLE = "_BLOCKWATCH_WORKER_SETTINGS"


class Mode(StrEnum):
    PRODUCTION = "production"
    LAB = "lab"  # tests and the censorship lab
    DEMO = "demo"  # `make demo`


@dataclass(frozen=True)
class Cli:
    """Marks a setting as an option of ``serve``.

    ``flag`` and ``env`` default to ``--field-name`` and ``BLOCKWATCH_FIELD_NAME``;
    ``negate``: a switch that sets the field False (``--no-detector``);
    ``repeat``: a repeatable option, its values joined with commas.
    """

    flag: str | None = None
    env: str | None = None
    negate: bool = False
    repeat: bool = False


def _seconds(value: object) -> object:
    # Strings are durations (90, 30s, 5m, 2h, at most a day), as on the probe's command
    # line; numbers go on to the field's own checks.
    if not isinstance(value, str):
        return value
    try:
        return parse_duration(value)
    except InvalidOptionError as exc:
        raise ValueError(str(exc)) from None


def _seconds_or_zero(value: object) -> object:
    if isinstance(value, str) and value.strip() in {"0", "0s"}:
        return 0.0
    return _seconds(value)


Duration = Annotated[float, BeforeValidator(_seconds)]
DurationOrZero = Annotated[float, BeforeValidator(_seconds_or_zero)]
DURATION_VALIDATORS = (_seconds, _seconds_or_zero)


class CollectorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BLOCKWATCH_", extra="ignore")

    database_url: Annotated[str, Cli()] = Field(
        "sqlite:///./blockwatch.db",
        description="sqlite:///./blockwatch.db (default) or postgresql://user@host/db",
    )
    mode: Annotated[Mode, Cli()] = Field(
        Mode.PRODUCTION,
        description="production, or lab and demo (tests, the censorship lab, the demo: a weak "
        "admin token is accepted, and no control prober runs without named resolvers).",
    )
    admin_token: Annotated[SecretStr, Cli()] = Field(
        SecretStr(""),
        description="Bearer token for the admin API (a random secret, 24 characters at least).",
    )
    host: Annotated[str, Cli()] = Field("127.0.0.1", description="Where to listen.")
    port: Annotated[int, Cli()] = Field(8080, ge=1, le=65535, description="Where to listen.")
    workers: Annotated[int, Cli()] = Field(
        1, ge=1, le=64, description="Processes serving the API (one per core on a busy collector)."
    )
    open_enrollment: Annotated[bool, Cli()] = Field(
        False,
        description="Probes enroll without a token (labs, demos); otherwise they need a token "
        "or wait for approval.",
    )
    measure_interval: Annotated[Duration, Cli()] = Field(
        300.0,
        gt=0,
        description="Control prober's interval, handed to probes too (90, 30s, 5m). Default 5m.",
    )
    retest_spacing: float = Field(
        180.0, ge=0, description="Least time between two measurements of one address and port."
    )
    max_future_skew: float = Field(
        300.0, ge=0, description="How far in the future (clock skew) a signed document may be."
    )
    max_age: float = Field(
        8 * 86400.0, gt=0, description="How old a signed measurement may be (the spool's life)."
    )
    max_request_age: float = Field(
        600.0,
        gt=0,
        description="How old a signed check-in, enrollment or key rotation may be (10 min): "
        "these are sent at once, never spooled.",
    )
    retired_key_grace: float = Field(
        86400.0,
        ge=0,
        description="How long after a rotation the collector recorded the old key's "
        "measurements (signed before it) are still accepted (24h).",
    )
    max_batch_items: int = Field(500, ge=1, le=10_000, description="Envelopes in one batch.")
    max_payload_bytes: int = Field(
        64 * 1024, ge=1024, description="Signed bytes of one measurement (64 KiB)."
    )
    max_body_bytes: int = Field(
        8 * 1024 * 1024,
        ge=1024,
        description="Request body limit, after decompression (8 MiB: a full batch of large "
        "measurements; docs/operator-guide.md says how it was measured).",
    )
    measurement_quota: int = Field(
        0,
        ge=0,
        description="Measurements one key may store per measurement interval of measurement "
        "time (0: 4 per target, plus 32).",
    )
    unverified_rate_limit: int = Field(
        600,
        ge=0,
        description="Requests per minute, all probes together, that verify no key at all "
        "(0: no limit).",
    )
    max_pending_enrollments: int = Field(
        1000, ge=0, description="Enrollments waiting for approval, at most."
    )
    max_pending_subscriptions: int = Field(
        1000, ge=0, description="Subscriptions waiting for their ownership check, at most."
    )
    max_pending_per_domain: int = Field(
        10, ge=0, description="Subscriptions of one domain waiting for their ownership check."
    )
    verify_rate_limit: int = Field(
        6,
        ge=0,
        description="Ownership checks a minute per subscription (each one is DNS and HTTPS "
        "requests from the collector; 0: no limit).",
    )
    probe_rate_limit: int = Field(
        120, ge=0, description="Requests per minute per probe key on check-in and submission "
        "(0: no limit).",
    )  # fmt: skip
    geoip_country_db: Path | None = Field(None, description="MaxMind-format country .mmdb.")
    geoip_asn_db: Path | None = Field(None, description="MaxMind-format ASN .mmdb.")
    geoip_city_db: Path | None = Field(
        None, description="City-level .mmdb (GeoLite2-City, DB-IP City Lite): regions (CN-HA)."
    )
    trusted_proxies: str = Field(
        "",
        description="Reverse proxies whose X-Forwarded-For is believed (CIDRs, comma-separated).",
    )
    ca_file: Annotated[Path | None, Cli()] = Field(
        None,
        description="CA bundle the control prober validates instance certificates with (labs).",
    )
    no_control: Annotated[bool, Cli()] = Field(False, description="Run no control prober.")
    webhook_allow_private: Annotated[bool, Cli()] = Field(
        False,
        description="Alerts and ownership checks may reach any address, private ones too (labs).",
    )
    webhook_allowlist: str = Field(
        "", description="CIDRs alerts and verification may reach although not public (labs, tests)."
    )
    # Alerts: the base URL events link to, the least time between two updates of one
    # event to one subscriber, and each request's timeout.
    public_url: str = Field("", description="The collector's public base URL (alerts link to it).")
    # The decoys probes draw their SNI control from (probe_agent/measure/decoys.py).
    decoy_snis: Annotated[str, Cli(flag="--decoy-sni", repeat=True)] = Field(
        "",
        description="A name for the probes' SNI control, repeatable: handed out at check-in, "
        "each round draws one. Default: the probes' built-in pool.",
    )
    # The collector's other ways in (collector/services/reachability.py): handed to
    # probes at check-in, signed; their host names are measured like targets.
    endpoints: Annotated[str, Cli(flag="--endpoint", repeat=True)] = Field(
        "",
        description="Another base URL of this collector, URL[;address=IP][;sni=NAME] (a second "
        "name or address, the operator's own front, a .onion), repeatable: probes get them "
        "at check-in, signed, try them when the others fail, and measure their names.",
    )
    alert_update_interval: float = Field(600.0, ge=0, description="Seconds between updates.")
    alert_timeout: float = Field(10.0, gt=0, le=120, description="Each alert request's timeout.")
    alert_interval: float = Field(1.0, gt=0, description="How often due messages are looked for.")
    alert_language: Annotated[str, Cli()] = Field(
        "en",
        pattern=r"^(en|zh-Hans)$",
        description="The language of alerts whose subscription chose none and whose instance "
        "names none we have (en or zh-Hans).",
    )
    # The control prober: the collector's own, uncensored vantage. Empty resolvers mean
    # the system resolver in production and no control prober in the lab and demo modes
    # (nothing may leave the machine).
    control_resolvers: Annotated[str, Cli(flag="--control-resolver", repeat=True)] = Field(
        "",
        description="Resolver IP[:PORT] of the control prober, repeatable. Default: the system's "
        "(in production; the lab and demo modes need it named, or run no control).",
    )
    control_port: Annotated[int, Cli()] = Field(
        443, ge=1, le=65535, description="Instances' HTTPS port (443)."
    )
    control_concurrency: Annotated[int, Cli()] = Field(
        64, ge=1, le=4096, description="Domains the control prober measures at once."
    )
    control_timeout: Annotated[float, Cli()] = Field(10.0, ge=0.1, le=120, description="Seconds.")
    control_cc: str = Field(
        "ZZ", pattern=r"^[A-Z]{2}$", description="The country of the control's measurements."
    )
    lab_networks: Annotated[str, Cli(flag="--lab-network", repeat=True)] = Field(
        "", description="CIDR treated as globally routable (labs), repeatable."
    )
    # The detector (docs/methodology.md, "Block events"). None means "derived from
    # measure_interval". API-only replicas and tests turn the detector off.
    detector: Annotated[
        bool, Cli(flag="--no-detector", env="BLOCKWATCH_NO_DETECTOR", negate=True)
    ] = Field(
        True,
        description="Serve the API only: no detector, no control prober "
        "(another replica runs them).",
    )
    detect_interval: Annotated[Duration, Cli()] = Field(
        15.0, gt=0, description="Time between detection passes (15s)."
    )
    detect_window: Annotated[Duration | None, Cli()] = Field(
        None, gt=0, description="Sliding window of the detector (default: 3 measure intervals)."
    )
    control_window: Annotated[Duration | None, Cli()] = Field(
        None,
        gt=0,
        description="Greatest time between a measurement and its control (default: 1 interval).",
    )
    control_wait: Annotated[Duration | None, Cli()] = Field(
        None,
        gt=0,
        description="How long a failed measurement waits for a control taken after it "
        "(default: 1 interval + 60s), then is unknown.",
    )
    open_min_probes: Annotated[int, Cli()] = Field(
        2, ge=1, description="Probes that open an event (2)."
    )
    stay_min_probes: Annotated[int, Cli()] = Field(
        1, ge=1, description="Blocked probes that keep one open (1)."
    )
    close_min_probes: Annotated[int, Cli()] = Field(
        2, ge=1, description="Probes of the affected networks that must say ok to close it (2)."
    )
    collapse_ratio: Annotated[float, Cli()] = Field(
        0.5,
        ge=0.01,
        le=0.99,
        description="Reporting probes, as a share of their peak, that is reported as a collapse.",
    )
    residual_seconds: Annotated[
        DurationOrZero, Cli(flag="--residual", env="BLOCKWATCH_RESIDUAL")
    ] = Field(
        180.0,
        ge=0,
        description="How long after an SNI trigger a probe's failures on that address are "
        "residue (the GFW's 90-180s; default 180s).",
    )
    analysis_batch: int = Field(5000, ge=1, description="Measurements analyzed at once.")
    # Trust and publication (docs/methodology.md, "Volunteers, not keys"; docs/evidence.md).
    publish_min_volunteers: Annotated[int, Cli()] = Field(
        3,
        ge=1,
        description="Public answers name a network only when at least this many volunteers "
        "report from it; smaller ones are folded into their country (3).",
    )
    evidence_delay: Annotated[Duration, Cli()] = Field(
        86400.0,
        gt=0,
        description="How long after an event opens its evidence bundle is public (24h); the "
        "admin and the domain's verified subscribers get it at once.",
    )
    key_file: Annotated[Path | None, Cli()] = Field(
        None,
        description="The collector's Ed25519 key (PEM), shared by every replica "
        "(`blockwatch-collector keygen`); a lone instance creates it on first start "
        "(default: collector-key.pem beside a SQLite database).",
    )
    secret_key: SecretStr = Field(
        SecretStr(""),
        description="Key(s) sealing webhook secrets and channel tokens at rest (Fernet, "
        "comma-separated: the first seals, all open; `secrets rotate` re-seals).",
    )
    metrics_token: SecretStr = Field(
        SecretStr(""), description="Read-only bearer token for GET /metrics (Prometheus)."
    )
    metrics_host: Annotated[str | None, Cli()] = Field(
        None, description="A private listener for /metrics only (no token asked there)."
    )
    metrics_port: Annotated[int | None, Cli()] = Field(
        None, ge=1, le=65535, description="The private metrics listener's port."
    )

    @field_validator("database_url")
    @classmethod
    def _normalize_url(cls, value: str) -> str:
        # postgresql:// means psycopg 3 (SQLAlchemy's default would be psycopg2).
        if value.startswith("postgresql://") or value.startswith("postgres://"):
            return "postgresql+psycopg://" + value.split("://", 1)[1]
        return value

    @model_validator(mode="after")
    def _refuse_placeholder_token(self) -> CollectorSettings:
        token = self.admin_token.get_secret_value()
        weak = token.lower() in PLACEHOLDER_TOKENS or len(token) < MIN_ADMIN_TOKEN_LENGTH
        if weak and self.mode is Mode.PRODUCTION:
            raise ValueError(
                "refusing to start: set BLOCKWATCH_ADMIN_TOKEN (or --admin-token) to a random "
                f"secret of at least {MIN_ADMIN_TOKEN_LENGTH} characters "
                "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`), "
                "or run with BLOCKWATCH_MODE=lab for a lab or demo"
            )
        return self

    @model_validator(mode="after")
    def _require_shared_key(self) -> CollectorSettings:
        # Replicas on one PostgreSQL must sign evidence with one key (collector/core/keys.py).
        if self.key_file is None and not self.is_sqlite and self.mode is Mode.PRODUCTION:
            raise ValueError(
                "refusing to start: with PostgreSQL every replica must sign with one key; run "
                "`blockwatch-collector keygen --out PATH` once and give every replica that "
                "file (--key-file PATH or BLOCKWATCH_KEY_FILE)"
            )
        return self

    @model_validator(mode="after")
    def _require_secret_key(self) -> CollectorSettings:
        # PostgreSQL has no file beside it for the key sealing secrets (collector/core/secrets.py).
        keyless = not self.secret_key.get_secret_value().strip()
        if keyless and not self.is_sqlite and self.mode is Mode.PRODUCTION:
            raise ValueError(
                "refusing to start: with PostgreSQL, set BLOCKWATCH_SECRET_KEY (`blockwatch-"
                "collector secrets keygen` makes one), the same on every replica: it seals "
                "the subscriptions' secrets at rest"
            )
        return self

    @model_validator(mode="after")
    def _check_metrics_listener(self) -> CollectorSettings:
        # collector/api/metrics_listener.py: a port of its own, the host optional.
        if self.metrics_host is not None and self.metrics_port is None:
            raise ValueError("--metrics-host needs --metrics-port (the private metrics listener)")
        if self.metrics_port == self.port:
            raise ValueError("--metrics-port must differ from --port (a listener of its own)")
        return self

    @field_validator("public_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        try:
            return parse_collector_url(value) if value.strip() else ""
        except InvalidOptionError as exc:
            raise ValueError(str(exc).replace("collector URL", "URL")) from exc

    @field_validator("decoy_snis")
    @classmethod
    def _check_decoys(cls, value: str) -> str:
        names = [n.strip() for n in value.split(",") if n.strip()]
        try:
            return ",".join(dict.fromkeys(normalize_domain(n) for n in names))
        except InvalidDomainError as exc:
            raise ValueError(f"invalid decoy name: {exc}") from exc

    @field_validator("endpoints")
    @classmethod
    def _check_endpoints(cls, value: str) -> str:
        entries = [e.strip() for e in value.split(",") if e.strip()]
        try:
            return ",".join(Endpoint.parse(e).text() for e in entries)
        except InvalidOptionError as exc:
            raise ValueError(str(exc).replace("collector URL", "URL")) from exc

    @model_validator(mode="after")
    def _check_detector(self) -> CollectorSettings:
        if self.stay_min_probes > self.open_min_probes:
            raise ValueError("stay_min_probes may not exceed open_min_probes (hysteresis)")
        return self

    def export(self) -> str:
        """These settings as JSON, secrets in clear: for worker processes, never for logs."""
        values: dict[str, Any] = {
            name: value.get_secret_value() if isinstance(value, SecretStr) else value
            for name, value in self.model_dump().items()
        }
        return pydantic_core.to_json(values).decode()

    @classmethod
    def from_environment(cls) -> CollectorSettings:
        """The settings a ``serve`` parent exported, or else ``BLOCKWATCH_*`` alone."""
        exported = os.environ.get(WORKER_SETTINGS_VARIABLE)
        # Every field is in the export, so no BLOCKWATCH_* variable overrides any of them.
        return cls.model_validate_json(exported) if exported else cls()

    @property
    def lab_network_list(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """``lab_networks`` parsed (validated when the settings were read)."""
        return tuple(parse_network(n) for n in self.lab_networks.split(",") if n.strip())

    @property
    def window_seconds(self) -> float:
        """The detector's sliding window: three measurement intervals by default."""
        return self.detect_window or 3 * self.measure_interval

    @property
    def control_window_seconds(self) -> float:
        """How far apart in time a control and a measurement may be to be matched."""
        return self.control_window or self.measure_interval

    @property
    def control_wait_seconds(self) -> float:
        """How long a measurement waits for a control taken after it."""
        return self.control_wait or self.measure_interval + 60.0

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")
