"""Why a call or a run failed: the closed set of failure reasons, one exception class each.

Every message is written for an operator ("what happened, where") and never contains the
site's secret: the client scrubs messages before raising (see ``AkeebaClient``).
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar


class FailureReason(StrEnum):
    """Why a run failed; exported as the ``reason`` label, so the set is closed."""

    AUTH = "auth"
    """Status 503/401: wrong or weak secret, JSON API switched off, or a Core edition."""
    UNKNOWN_PROFILE = "unknown_profile"
    """The schedule's profile is not in the site's getProfiles list."""
    UNREACHABLE = "unreachable"
    """DNS failure, connection refused or reset before sending, TLS failure."""
    TIMEOUT = "timeout"
    """One HTTP call took longer than ``request_timeout`` (or could not connect in time)."""
    HTTP_ERROR = "http_error"
    """A non-2xx HTTP answer without an API envelope (PHP fatal, WAF, proxy, database down)."""
    BAD_RESPONSE = "bad_response"
    """No parseable envelope, or an envelope missing the fields the method must carry."""
    REMOTE_ERROR = "remote_error"
    """The API answered with an error status (engine error, 404, 405...) or ``Error`` set."""
    RESTARTED = "restarted"
    """The server silently started another backup than the one asked for."""
    MISBEHAVING_SERVER = "misbehaving_server"
    """The server broke a protocol invariant (stepNumber went back or repeated mid-run)."""
    STALLED = "stalled"
    """No reply moved the run for ``stall_timeout``."""
    DEADLINE = "deadline"
    """The run took longer than ``run_timeout``."""
    VERIFY = "verify"
    """The run's own backup record is not complete, or has no size."""
    INTERRUPTED = "interrupted"
    """The run was cancelled, or could not be resumed after a restart."""


class AkeebaError(Exception):
    """Base of every failure the client and the run engine report; ``reason`` is its class's."""

    reason: ClassVar[FailureReason]

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class TransportError(AkeebaError):
    """A failure of the HTTP exchange itself, which a step may retry with the same backupid."""

    request_sent: bool = True
    """False only when the request provably never reached the server (connect/DNS/TLS)."""
    in_doubt: bool = False
    """True when no complete reply came back although the request was sent: the call may
    still be executing on the server (timeout, connection lost mid-reply)."""


class UnreachableError(TransportError):
    """DNS, connect or TLS failure (the request was never sent), or a connection lost mid-call."""

    reason = FailureReason.UNREACHABLE

    def __init__(self, message: str, *, sent: bool = False) -> None:
        super().__init__(message)
        self.request_sent = sent
        self.in_doubt = sent


class RequestTimeoutError(TransportError):
    """The call took longer than the request timeout; the server may still be working on it."""

    reason = FailureReason.TIMEOUT

    def __init__(self, message: str, *, request_sent: bool = True) -> None:
        super().__init__(message)
        self.request_sent = request_sent
        self.in_doubt = request_sent


class HttpError(TransportError):
    """A non-2xx answer without an API envelope."""

    reason = FailureReason.HTTP_ERROR

    def __init__(self, message: str, *, http_status: int) -> None:
        super().__init__(message)
        self.http_status = http_status

    @property
    def retryable(self) -> bool:
        """Return True for statuses that say "try again later" (5xx, 408, 429)."""
        return self.http_status >= 500 or self.http_status in (408, 429)


class BadResponseError(TransportError):
    """The body holds no usable envelope (HTML page, junk, truncated, too large)."""

    reason = FailureReason.BAD_RESPONSE

    def __init__(self, message: str, *, in_doubt: bool = False) -> None:
        super().__init__(message)
        self.in_doubt = in_doubt


class AuthError(AkeebaError):
    """The API refused the secret (envelope status 503 or 401)."""

    reason = FailureReason.AUTH


class RemoteError(AkeebaError):
    """The API answered with an error status other than auth, or the engine set ``Error``."""

    reason = FailureReason.REMOTE_ERROR

    def __init__(self, message: str, *, api_status: int | None = None) -> None:
        super().__init__(message)
        self.api_status = api_status


class RecordNotFoundError(RemoteError):
    """getBackupInfo answered status 404: no record with that id."""


class UnknownProfileError(AkeebaError):
    """The profile to back up does not exist on the site."""

    reason = FailureReason.UNKNOWN_PROFILE


class RestartedError(AkeebaError):
    """The server silently replaced the run with another backup."""

    reason = FailureReason.RESTARTED


class MisbehavingServerError(AkeebaError):
    """The server broke a protocol invariant."""

    reason = FailureReason.MISBEHAVING_SERVER


class StalledError(AkeebaError):
    """Nothing moved for ``stall_timeout``."""

    reason = FailureReason.STALLED


class DeadlineError(AkeebaError):
    """The run exceeded ``run_timeout``."""

    reason = FailureReason.DEADLINE


class VerifyError(AkeebaError):
    """The finished run's record is not a complete, non-empty backup."""

    reason = FailureReason.VERIFY


class InterruptedRunError(AkeebaError):
    """The run was cancelled or could not be resumed."""

    reason = FailureReason.INTERRUPTED
