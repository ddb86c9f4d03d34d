"""Per-image and per-project limits (Glance's legacy quotas)."""

from __future__ import annotations

import re

from abbild.errors import ConfigError, QuotaExceeded

_UNITS = {"": 1, "B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}


def parse_size(text: str, option: str = "user_storage_quota") -> int:
    """``"10GB"`` -> bytes (units are powers of 1024, as Glance's).

    :raises abbild.errors.ConfigError: not a size.
    """
    m = re.fullmatch(r"\s*(\d+)\s*([KMGT]?B)?\s*", text or "", re.IGNORECASE)
    if not m:
        raise ConfigError(
            f"{option} = {text!r} is not a size: write a number of bytes, or one with a unit "
            f"(B, KB, MB, GB, TB), like 500GB"
        )
    return int(m.group(1)) * _UNITS[(m.group(2) or "").upper()]


def check_count(image_id: str, what: str, option: str, before: int, after: int, limit: int) -> None:
    """A change may not raise the number of *what* on an image above *limit* (negative:
    no limit). An image already over it (the limit was lowered) may still shrink.

    :raises abbild.errors.QuotaExceeded:
    """
    if 0 <= limit < after and after > before:
        raise QuotaExceeded(f"Image {image_id} would have {after} {what}; at most {limit} are allowed ({option}).")


def check_location_added(image, limit: int) -> None:
    """*image* may take one more location under ``image_location_quota`` (*limit*)."""
    check_count(image.id, "locations", "image_location_quota", len(image.locations), len(image.locations) + 1, limit)
