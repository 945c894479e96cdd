"""Settings shared by the edge and the functions.

The edge reads them from its command line (each flag also has an environment variable); a
Cloud Function has no command line, so it reads the same names from its environment. Both end
in one frozen `UploadSettings`, so the upload code sees one shape whatever the runtime.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:
    from .dimse_tls import TlsFiles
    from .transforms import Transform

ENV_PREFIX = "DICOM_ADAPTER_"

# Status codes worth another try: the store or the network is briefly unable, not unwilling.
DEFAULT_RETRY_STATUS_CODES = frozenset({408, 429, 500, 502, 503, 504})


def env_name(flag: str) -> str:
    """The environment variable that stands for `--flag` (e.g. DICOM_ADAPTER_DIMSE_AET)."""
    return ENV_PREFIX + flag.upper()


def parse_status_codes(text: str | None) -> frozenset[int]:
    """Parse '408,429,5xx'-style lists; empty or None means the defaults."""
    if not text:
        return DEFAULT_RETRY_STATUS_CODES
    codes: set[int] = set()
    for part in text.replace(";", ",").split(","):
        part = part.strip().lower()
        if not part:
            continue
        if len(part) == 3 and part.endswith("xx") and part[0].isdigit():
            base = int(part[0]) * 100
            codes.update(range(base, base + 100))
        else:
            codes.add(int(part))
    return frozenset(codes)


@dataclass(frozen=True)
class UploadSettings:
    """How `stow_upload` talks to the DICOMweb store."""

    dicomweb_address: str  # the default store ("" : none; every event must then name its destination)
    stow_overwrite: bool = False
    retry_status_codes: frozenset[int] = field(default=DEFAULT_RETRY_STATUS_CODES)
    # Backoff between attempts inside one delivery, as the Google adapter's flags name them.
    min_upload_delay_ms: int = 100
    max_waiting_time_between_uploads_ms: int = 5000
    attempts_per_delivery: int = 4
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 300.0
    calling_aet: str = "DICOMADAPTER"  # our AE title towards DIMSE destinations
    dimse_tls: "TlsFiles | None" = None  # our certificate towards DIMSE destinations marked "tls"
    # The default store's copy transformed (Google's redact/compress flags); None: byte-exact.
    default_transform: "Transform | None" = None
    # Secret reference (credentials.py) of the key de-identification derives new UIDs from.
    deidentify_key_secret: str = ""
    # The most decoded pixel data one transcode may hold here (a transcode takes 4-5 times it):
    # every destination's max_pixel_bytes is capped by it; None: each destination's own.
    transcode_max_pixel_bytes: int | None = None

    @property
    def use_google_auth(self) -> bool:
        return uses_google_auth(self.dicomweb_address)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "UploadSettings":
        env = os.environ if env is None else env
        address = env.get(env_name("dicomweb_address"), "")
        return cls(
            dicomweb_address=address,
            stow_overwrite=_truthy(env.get(env_name("stow_overwrite"))),
            retry_status_codes=parse_status_codes(env.get(env_name("http_error_codes_to_retry"))),
            min_upload_delay_ms=int(env.get(env_name("min_upload_delay"), 100)),
            max_waiting_time_between_uploads_ms=int(env.get(env_name("max_waiting_time_between_uploads"), 5000)),
            calling_aet=env.get(env_name("dimse_aet"), "DICOMADAPTER"),
            dimse_tls=_dimse_tls_from_env(env),
            default_transform=default_transform(**{flag: env.get(env_name(flag), "") for flag in TRANSFORM_FLAGS}),
            deidentify_key_secret=env.get(env_name("deidentify_key_secret"), ""),
            transcode_max_pixel_bytes=_positive_int(env, "transcode_max_pixel_bytes"),
        )


# Google's adapter's flags for a transformed copy in the default store (Transform.from_google_flags).
TRANSFORM_FLAGS = ("redact_remove_list", "redact_keep_list", "redact_filter_profile", "store_compress_to_transfer_syntax")


def default_transform(**flags: str | None) -> "Transform | None":
    """The default store's transform from TRANSFORM_FLAGS (None when none is given); raises
    TransformConfigError naming a bad entry."""
    from .transforms import Transform

    transform = Transform.from_google_flags(**{flag: flags.get(flag) or "" for flag in TRANSFORM_FLAGS})
    return None if transform.is_identity else transform


def _positive_int(env: Mapping[str, str], flag: str) -> int | None:
    text = env.get(env_name(flag), "").strip()
    if not text:
        return None
    if not text.isdigit() or int(text) <= 0:
        raise ValueError(f"{env_name(flag)} must be a positive integer, not {text!r}")
    return int(text)


def _dimse_tls_from_env(env: Mapping[str, str]) -> "TlsFiles | None":
    from .dimse_tls import TlsFiles

    return TlsFiles.from_env(env)


def uses_google_auth(address: str) -> bool:
    """The Healthcare API takes ADC tokens; other DICOMweb servers get plain requests."""
    return address.startswith("https://healthcare.googleapis.com/")


@dataclass(frozen=True)
class SweepSettings:
    """What `sweep` needs: the buffer to look into and the topic to re-announce on."""

    gcs_buffer: str
    pubsub_topic: str
    min_age_minutes: float = 15.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "SweepSettings":
        env = os.environ if env is None else env
        missing = [env_name(key) for key in ("gcs_buffer", "pubsub_topic") if not env.get(env_name(key))]
        if missing:
            raise ValueError(f"{', '.join(missing)} not set")
        return cls(
            gcs_buffer=env[env_name("gcs_buffer")],
            pubsub_topic=env[env_name("pubsub_topic")],
            min_age_minutes=float(env.get(env_name("sweep_min_age_minutes"), 15.0)),
        )


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}
