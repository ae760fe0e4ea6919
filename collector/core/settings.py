"""The collector's settings: one pydantic-settings class, read from ``BLOCKWATCH_*``.

Built once by the CLI (command-line options override the environment) and
handed to the app, which provides it to routes through a dependency; never
instantiated at import time. It refuses to start with a placeholder admin token
unless the collector runs in the lab or demo mode.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PLACEHOLDER_TOKENS = frozenset(
    {"", "changeme", "change-me", "admin", "secret", "password", "token", "test", "xxx"}
)
MIN_ADMIN_TOKEN_LENGTH = 24


class Mode(StrEnum):
    PRODUCTION = "production"
    LAB = "lab"  # tests and the censorship lab
    DEMO = "demo"  # `make demo`


class CollectorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BLOCKWATCH_", extra="ignore")

    database_url: str = "sqlite:///./blockwatch.db"
    mode: Mode = Mode.PRODUCTION
    admin_token: SecretStr = SecretStr("")
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    open_enrollment: bool = False
    # Check-in and control prober interval, seconds.
    measure_interval: float = Field(300.0, gt=0)
    retest_spacing: float = Field(180.0, ge=0)
    # Signed documents: how far in the future (clock skew) and how old they may be.
    max_future_skew: float = Field(300.0, ge=0)
    max_age: float = Field(8 * 86400.0, gt=0)
    max_batch_items: int = Field(500, ge=1, le=10_000)
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    # Requests per minute per probe key on check-in and submission (0: no limit).
    probe_rate_limit: int = Field(120, ge=0)
    geoip_country_db: Path | None = None
    geoip_asn_db: Path | None = None
    # Reverse proxies whose X-Forwarded-For is believed (CIDRs, comma-separated).
    trusted_proxies: str = ""
    ca_file: Path | None = None
    no_control: bool = False
    webhook_allow_private: bool = False
    # CIDRs alerts and verification may reach although not public (labs, tests).
    webhook_allowlist: str = ""
    # Alerts: the base URL events link to, the least time between two updates of one
    # event to one subscriber, and each request's timeout.
    public_url: str = ""
    alert_update_interval: float = Field(600.0, ge=0)
    alert_timeout: float = Field(10.0, gt=0, le=120)
    alert_interval: float = Field(1.0, gt=0)
    # The control prober: the collector's own, uncensored vantage. Resolvers as
    # "ip[:port]", comma-separated; empty means the system resolver in production
    # and no control prober in the lab and demo modes (nothing may leave the machine).
    control_resolvers: str = ""
    control_port: int = Field(443, ge=1, le=65535)  # the instances' HTTPS port (labs change it)
    control_concurrency: int = Field(64, ge=1, le=4096)
    control_timeout: float = Field(10.0, gt=0, le=120)
    control_cc: str = Field("ZZ", pattern=r"^[A-Z]{2}$")
    # Networks treated as globally routable by the analysis and the control (labs).
    lab_networks: str = ""
    # The detector (docs/methodology.md, "Block events"). Durations in seconds;
    # None means "derived from measure_interval".
    # Run the detector (and the control prober) in `serve`; API-only tests turn it off.
    detector: bool = True
    detect_interval: float = Field(15.0, gt=0)
    detect_window: float | None = Field(None, gt=0)
    control_window: float | None = Field(None, gt=0)
    control_wait: float | None = Field(None, gt=0)
    open_min_probes: int = Field(2, ge=1)
    stay_min_probes: int = Field(1, ge=1)
    close_min_probes: int = Field(2, ge=1)
    collapse_ratio: float = Field(0.5, gt=0, lt=1)
    residual_seconds: float = Field(180.0, ge=0)
    analysis_batch: int = Field(5000, ge=1)

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
    def _check_detector(self) -> CollectorSettings:
        if self.stay_min_probes > self.open_min_probes:
            raise ValueError("stay_min_probes may not exceed open_min_probes (hysteresis)")
        return self

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
