"""The Akeeba Backup remote JSON API: transports v2 and v1, endpoint detection, typed replies."""

from .client import AkeebaClient, ClientSettings, RequestObserver
from .detect import Detection, candidate_endpoints, detect_endpoint
from .errors import (
    AkeebaError,
    AuthError,
    BadResponseError,
    DeadlineError,
    FailureReason,
    HttpError,
    InterruptedRunError,
    MisbehavingServerError,
    RecordNotFoundError,
    RemoteError,
    RequestTimeoutError,
    RestartedError,
    StalledError,
    TransportError,
    UnknownProfileError,
    UnreachableError,
    VerifyError,
)
from .models import (
    BackupFile,
    BackupRecord,
    BackupStatus,
    Profile,
    RecordStatus,
    VersionInfo,
)
from .options import ApiGeneration, AuthPlacement, HttpVerb, Platform
from .secret import Secret
from .site import SiteAddress, SiteRemote
from .transport import Endpoint, redact_url

__all__ = [
    "AkeebaClient",
    "AkeebaError",
    "ApiGeneration",
    "AuthError",
    "AuthPlacement",
    "BackupFile",
    "BackupRecord",
    "BackupStatus",
    "BadResponseError",
    "ClientSettings",
    "DeadlineError",
    "Detection",
    "Endpoint",
    "FailureReason",
    "HttpError",
    "HttpVerb",
    "InterruptedRunError",
    "MisbehavingServerError",
    "Platform",
    "Profile",
    "RecordNotFoundError",
    "RecordStatus",
    "RemoteError",
    "RequestObserver",
    "RequestTimeoutError",
    "RestartedError",
    "Secret",
    "SiteAddress",
    "SiteRemote",
    "StalledError",
    "TransportError",
    "UnknownProfileError",
    "UnreachableError",
    "VerifyError",
    "VersionInfo",
    "candidate_endpoints",
    "detect_endpoint",
    "redact_url",
]
