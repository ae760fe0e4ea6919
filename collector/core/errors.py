"""The collector's errors: each with a stable code and an HTTP status.

Library exceptions (pydantic, SQLAlchemy, the envelope's) are translated into
these at one boundary each; the app's exception handler renders any of them as
``{"error": {"code": "err_...", "message": "..."}}`` (docs/api.md).

    CollectorError
    +-- BadRequest            400  err_malformed_json, err_bad_encoding, err_malformed_envelope
    +-- Unauthorized          401  err_unauthorized, err_unknown_key, err_bad_signature,
    |                              err_invalid_token
    +-- Forbidden             403  err_revoked_key, err_probe_pending, err_forbidden
    +-- NotFound              404  err_not_found
    +-- Conflict              409  err_conflict
    +-- TooLarge              413  err_body_too_large, err_batch_too_large
    +-- Unprocessable         422  err_validation, err_malformed_payload,
    |                              err_timestamp_out_of_window, err_invalid_domain
    +-- RateLimited           429  err_rate_limited
"""

from __future__ import annotations


class CollectorError(Exception):
    status = 500
    code = "err_internal"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class BadRequest(CollectorError):
    status = 400
    code = "err_malformed_json"


class Unauthorized(CollectorError):
    status = 401
    code = "err_unauthorized"


class Forbidden(CollectorError):
    status = 403
    code = "err_forbidden"


class NotFound(CollectorError):
    status = 404
    code = "err_not_found"


class Conflict(CollectorError):
    status = 409
    code = "err_conflict"


class TooLarge(CollectorError):
    status = 413
    code = "err_body_too_large"


class Unprocessable(CollectorError):
    status = 422
    code = "err_validation"


class RateLimited(CollectorError):
    status = 429
    code = "err_rate_limited"

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


# Envelope error codes -> the class that carries their status.
ENVELOPE_ERRORS: dict[str, type[CollectorError]] = {
    "err_malformed_envelope": BadRequest,
    "err_bad_signature": Unauthorized,
    "err_malformed_payload": Unprocessable,
}
