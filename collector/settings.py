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

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")
