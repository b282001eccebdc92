"""How to reach a site's JSON API: platform, API generation, HTTP verb, where the secret goes."""

from __future__ import annotations

from enum import StrEnum


class Platform(StrEnum):
    """What the site runs; decides which endpoint paths are tried."""

    AUTO = "auto"
    """Try every known endpoint, newest first."""
    JOOMLA = "joomla"
    """Joomla with Akeeba Backup (``com_akeebabackup`` 9.x, or ``com_akeeba`` 7.4-8.x)."""
    JOOMLA_API = "joomla-api"
    """Joomla 4/5 with Akeeba Backup 9.6+, through the Joomla API application."""
    WORDPRESS = "wordpress"
    """WordPress with Akeeba Backup for WordPress."""
    SOLO = "solo"
    """Akeeba Solo."""
    CUSTOM = "custom"
    """The full endpoint URL is given in ``endpoint``."""


class ApiGeneration(StrEnum):
    """Which generation of the remote JSON API to speak."""

    AUTO = "auto"
    """v2 first, then v1."""
    V2 = "v2"
    """Plain JSON, secret in a header or the query string (Akeeba Backup 7.4+)."""
    V1 = "v1"
    """Legacy: ``json=`` request object, ``###``-wrapped reply, challenge authentication."""


class HttpVerb(StrEnum):
    """The HTTP verb for API calls; GET survives redirects, POST keeps parameters out of URLs."""

    GET = "get"
    POST = "post"


class AuthPlacement(StrEnum):
    """Where a v2 request carries the secret."""

    HEADER = "header"
    """``X-Akeeba-Auth`` header (kept out of access logs)."""
    QUERY = "query"
    """``_akeebaAuth`` query parameter (for proxies that strip unknown headers)."""
