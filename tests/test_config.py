"""Config loading: resolved values, every error at once with path and line, secrets kept out."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import get_args, get_origin
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from akeeba_backupd import cli
from akeeba_backupd.akeeba.options import ApiGeneration, AuthPlacement, HttpVerb, Platform
from akeeba_backupd.config import (
    DEFAULT_DESCRIPTION,
    Config,
    ConfigError,
    ConfigFile,
    MisfirePolicy,
    StateBackend,
    load_config,
)
from akeeba_backupd.cron import parse_cron
from akeeba_backupd.service import EXIT_CONFIG, EXIT_OK

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "config" / "example.yaml"
SCHEMA = REPO / "config" / "schema.json"

SHOP_SECRET = "s3cr3t-shop-value"
OPEN_SECRET = "s3cr3t-open-value"
TOKEN_SECRET = "s3cr3t-token-value"
ENV_SECRET = "s3cr3t-env-value"
SECRETS = (SHOP_SECRET, OPEN_SECRET, TOKEN_SECRET, ENV_SECRET)


@pytest.fixture
def credentials(tmp_path: Path) -> Path:
    """A credentials directory: shop and api-token at 0600, blog-open at 0644."""
    directory = tmp_path / "credentials"
    directory.mkdir()
    for name, value, mode in (
        ("shop", SHOP_SECRET, 0o600),
        ("api-token", TOKEN_SECRET, 0o400),
        ("blog-open", OPEN_SECRET, 0o644),
    ):
        path = directory / name
        path.write_text(value + "\n")
        path.chmod(mode)
    return directory


@pytest.fixture
def environ(credentials: Path) -> dict[str, str]:
    """The environment the loader sees: a credentials directory and one secret variable."""
    return {"CREDENTIALS_DIRECTORY": str(credentials), "BLOG_SECRET": ENV_SECRET}


def write(directory: Path, text: str, name: str = "config.yaml") -> Path:
    """Write dedented ``text`` to ``directory/name`` and return its path."""
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def assert_no_secret(text: str) -> None:
    """Fail when any of the test secrets appears in ``text``."""
    for secret in SECRETS:
        assert secret not in text


def load_error(path: Path, environ: dict[str, str]) -> ConfigError:
    """Return the ConfigError that loading ``path`` raises, checked to hold no secret."""
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ)
    error = caught.value
    assert_no_secret(str(error))
    assert_no_secret(repr(error.issues))
    assert error.issues
    return error


def issue_lines(error: ConfigError) -> list[str]:
    """Return each issue as printed, the main file's without its path."""
    return [str(issue) for issue in error.issues]


# --- a valid config -----------------------------------------------------------------------------

FULL = """
listen: "[::1]:0"
state_dir: state
api_token_file: "$CREDENTIALS_DIRECTORY/api-token"
defaults:
  timezone: Europe/Amsterdam
  request_timeout: 2m
  stall_timeout: 1h30m
  misfire_grace: 45
  verify: false
limits:
  max_concurrent: 3
  groups: {web9: 2, web3: 1}
sites:
  - name: shop
    url: https://shop.example.com/
    platform: joomla
    api: v2
    secret_file: "$CREDENTIALS_DIRECTORY/shop"
    group: web3
    labels: {zone: eu, customer: acme}
    request_timeout: 90s
    jitter: 500ms
    schedules:
      - name: nightly
        profile: 1
        cron: "H 2 * * *"
        description: "Nightly {date}"
      - name: hourly-db
        profile: 2
        cron: "@hourly"
        timezone: America/New_York
        request_timeout: 1d
        misfire: skip
        verify: true
  - name: blog
    url: http://blog.example.org
    secret_env: BLOG_SECRET
    platform: custom
    endpoint: "http://blog.example.org/wp-admin/admin-ajax.php?action=akeebabackup_api"
    http_verb: post
    auth: query
    tls_verify: false
    schedules:
      - {name: weekly, cron: "0 3 * * sun"}
"""


def test_full_config_resolves(tmp_path: Path, environ: dict[str, str], credentials: Path) -> None:
    """Defaults → site → schedule inheritance, units, zones, labels and secrets all resolve."""
    path = write(tmp_path, FULL)
    config = load_config(path, environ)

    assert config.source_path == path
    assert (config.listen_host, config.listen_port) == ("::1", 0)
    assert config.state_dir == tmp_path / "state"
    assert config.api_token is not None
    assert config.api_token.reveal() == TOKEN_SECRET
    assert config.api_token_file == credentials / "api-token"
    assert config.limits.max_concurrent == 3
    assert config.limits.groups == (("web3", 1), ("web9", 2))

    shop, blog = config.sites
    assert shop.name == "shop"
    assert shop.url == "https://shop.example.com/"
    assert (shop.platform, shop.api, shop.group) == (Platform.JOOMLA, ApiGeneration.V2, "web3")
    assert shop.secret.reveal() == SHOP_SECRET  # the trailing newline is stripped
    assert shop.labels == (("customer", "acme"), ("zone", "eu"))
    assert (shop.tls_verify, shop.http_verb, shop.auth) == (
        True,
        HttpVerb.GET,
        AuthPlacement.HEADER,
    )
    assert shop.endpoint is None
    # the site's own settings: its values over the defaults over the built-in ones
    assert shop.settings.timezone == ZoneInfo("Europe/Amsterdam")
    assert isinstance(shop.settings.timezone, ZoneInfo)
    assert shop.settings.request_timeout_seconds == 90.0
    assert shop.settings.jitter_seconds == 0.5
    assert shop.settings.stall_timeout_seconds == 5400.0
    assert shop.settings.misfire_grace_seconds == 45.0
    assert shop.settings.connect_timeout_seconds == 10.0
    assert shop.settings.run_timeout_seconds == 6 * 3600.0
    assert shop.settings.step_retries == 3
    assert shop.settings.misfire is MisfirePolicy.RUN_ONCE
    assert shop.settings.verify is False

    nightly, hourly = shop.schedules
    assert (nightly.name, nightly.profile, nightly.description) == ("nightly", 1, "Nightly {date}")
    assert nightly.cron.expression == "H 2 * * *"
    assert nightly.cron.resolved == parse_cron("H 2 * * *", "shop/nightly").resolved
    assert nightly.settings == shop.settings
    assert (hourly.name, hourly.profile) == ("hourly-db", 2)
    assert hourly.cron.resolved == parse_cron("@hourly", "shop/hourly-db").resolved
    assert hourly.description == DEFAULT_DESCRIPTION
    assert hourly.settings.timezone == ZoneInfo("America/New_York")
    assert hourly.settings.request_timeout_seconds == 86400.0
    assert hourly.settings.misfire is MisfirePolicy.SKIP
    assert hourly.settings.verify is True
    assert hourly.settings.jitter_seconds == 0.5  # from the site
    assert hourly.settings.stall_timeout_seconds == 5400.0  # from the defaults

    assert blog.secret.reveal() == ENV_SECRET
    assert (blog.platform, blog.http_verb, blog.auth) == (
        Platform.CUSTOM,
        HttpVerb.POST,
        AuthPlacement.QUERY,
    )
    assert (
        blog.endpoint == "http://blog.example.org/wp-admin/admin-ajax.php?action=akeebabackup_api"
    )
    assert blog.tls_verify is False
    assert blog.labels == ()
    assert blog.group is None
    assert blog.settings.request_timeout_seconds == 120.0
    assert blog.schedules[0].profile == 1
    assert blog.schedules[0].cron.resolved == "0 3 * * sun"

    with pytest.raises(dataclasses.FrozenInstanceError):
        config.sites = ()  # type: ignore[misc]


def test_minimal_config_takes_built_in_defaults(tmp_path: Path, environ: dict[str, str]) -> None:
    """A site with nothing but what is required gets the documented defaults."""
    path = write(
        tmp_path,
        """
        sites:
          - name: shop
            url: https://shop.example.com
            secret_file: "%d/shop"
            schedules: [{name: nightly, cron: "0 2 * * *"}]
        """,
    )
    config = load_config(path, {**environ, "STATE_DIRECTORY": "/var/lib/x:/var/lib/y"})
    assert (config.listen_host, config.listen_port) == ("127.0.0.1", 9489)
    assert config.state_dir == Path("/var/lib/x")
    assert config.api_token is None
    assert config.api_token_file is None
    assert config.limits.max_concurrent == 10
    assert config.limits.groups == ()
    (site,) = config.sites
    assert (site.platform, site.api) == (Platform.AUTO, ApiGeneration.AUTO)
    settings_ = site.schedules[0].settings
    assert settings_.timezone == ZoneInfo("UTC")
    assert settings_.request_timeout_seconds == 300.0
    assert settings_.connect_timeout_seconds == 10.0
    assert settings_.run_timeout_seconds == 21600.0
    assert settings_.stall_timeout_seconds == 1800.0
    assert settings_.step_retries == 3
    assert settings_.retry_backoff_seconds == 10.0
    assert settings_.misfire is MisfirePolicy.RUN_ONCE
    assert settings_.misfire_grace_seconds == 21600.0
    assert settings_.jitter_seconds == 0.0
    assert settings_.verify is True
    assert load_config(path, environ).state_dir == Path("/var/lib/akeeba-backupd")


@pytest.mark.parametrize(
    "secret_file",
    ["$CREDENTIALS_DIRECTORY/shop", "${CREDENTIALS_DIRECTORY}/shop", "%d/shop", "{absolute}"],
)
def test_credentials_directory_substitution(
    tmp_path: Path, environ: dict[str, str], credentials: Path, secret_file: str
) -> None:
    """$CREDENTIALS_DIRECTORY, ${CREDENTIALS_DIRECTORY} and %d/ all name the same file."""
    value = secret_file.replace("{absolute}", str(credentials / "shop"))
    path = write(
        tmp_path,
        f"""
        sites:
          - name: shop
            url: https://shop.example.com
            secret_file: "{value}"
            schedules: [{{name: nightly, cron: "@daily"}}]
        """,
    )
    assert load_config(path, environ).sites[0].secret.reveal() == SHOP_SECRET


def test_include_adds_sites_from_other_files(tmp_path: Path, environ: dict[str, str]) -> None:
    """Included files hold one site or a list of them; relative globs start at the main file."""
    write(
        tmp_path,
        """
        name: alpha
        url: https://alpha.example.com
        secret_file: "%d/shop"
        schedules: [{name: nightly, cron: "@daily"}]
        """,
        "sites.d/a.yaml",
    )
    write(
        tmp_path,
        """
        - name: beta
          url: https://beta.example.com
          secret_env: BLOG_SECRET
          schedules: [{name: nightly, cron: "@daily"}]
        - name: gamma
          url: https://gamma.example.com
          secret_env: BLOG_SECRET
          schedules: [{name: nightly, cron: "@daily"}]
        """,
        "sites.d/b.yaml",
    )
    path = write(tmp_path, 'include: ["sites.d/*.yaml", "nothing-here/*.yaml"]\n')
    config = load_config(path, environ)
    assert [site.name for site in config.sites] == ["alpha", "beta", "gamma"]


# --- errors -------------------------------------------------------------------------------------

SITE = """
  - name: {name}
    url: https://{name}.example.com
    secret_file: "$CREDENTIALS_DIRECTORY/shop"
    schedules:
      - name: nightly
        cron: "@daily"
"""


def test_three_mistakes_are_three_issues_at_once(tmp_path: Path, environ: dict[str, str]) -> None:
    """An unknown key, a bad cron and a bad timezone are all reported in one ConfigError."""
    path = write(
        tmp_path,
        """
        defaults:
          timezone: Europe/Amsterdan
        sites:
          - name: shop
            url: https://shop.example.com
            secret_file: "$CREDENTIALS_DIRECTORY/shop"
            schedules:
              - name: nightly
                cron: "H 25 * * *"
                profil: 2
        """,
    )
    error = load_error(path, environ)
    assert issue_lines(error) == [
        "defaults.timezone: unknown timezone 'Europe/Amsterdan': "
        "use an IANA name such as UTC or Europe/Amsterdam (line 2)",
        "sites[0].schedules[0].cron: invalid cron expression 'H 25 * * *': "
        "hour 25 is out of range 0-23 (line 9)",
        "sites[0].schedules[0].profil: unknown key 'profil' (did you mean 'profile'?) (line 10)",
    ]
    cron_issue = error.issues[1]
    assert (cron_issue.location, cron_issue.line, cron_issue.file) == (
        "sites[0].schedules[0].cron",
        9,
        path.absolute(),
    )
    assert cron_issue.included is False


# (YAML text, every issue expected, as printed)
ERROR_CASES = {
    "unknown key without a close match": (
        """
        sites:
          - name: shop
            url: https://shop.example.com
            secret_file: "$CREDENTIALS_DIRECTORY/shop"
            colour: blue
            schedules: [{name: nightly, cron: "@daily"}]
        """,
        ["sites[0].colour: unknown key 'colour' (line 5)"],
    ),
    "unknown top-level key with a close match": (
        "listn: '127.0.0.1:1'\nsites:" + SITE.format(name="shop"),
        ["listn: unknown key 'listn' (did you mean 'listen'?) (line 1)"],
    ),
    "missing required keys": (
        """
        sites:
          - url: https://shop.example.com
            secret_file: "$CREDENTIALS_DIRECTORY/shop"
            schedules: [{name: nightly}]
        """,
        [
            "sites[0]: missing required key 'name' (line 2)",
            "sites[0].schedules[0]: missing required key 'cron' (line 4)",
        ],
    ),
    "duplicate keys": (
        """
        sites:
          - name: shop
            url: https://shop.example.com
            secret_file: "$CREDENTIALS_DIRECTORY/shop"
            url: https://other.example.com
            schedules: [{name: nightly, cron: "@daily"}]
        """,
        ["sites[0].url: duplicate key 'url' (first at line 3) (line 5)"],
    ),
    "duplicate site and schedule names": (
        """
        sites:
          - name: shop
            url: https://shop.example.com
            secret_file: "$CREDENTIALS_DIRECTORY/shop"
            schedules:
              - {name: nightly, cron: "@daily"}
              - {name: nightly, cron: "@hourly"}
          - name: shop
            url: https://shop2.example.com
            secret_file: "$CREDENTIALS_DIRECTORY/shop"
            schedules: [{name: nightly, cron: "@daily"}]
        """,
        [
            "sites[0].schedules[1].name: duplicate schedule name 'nightly' (first at line 6) "
            "(line 7)",
            "sites[1].name: duplicate site name 'shop' (first at line 2) (line 8)",
        ],
    ),
    "unknown group": (
        """
        limits:
          groups: {web3: 1, web4: 2}
        sites:
          - name: shop
            url: https://shop.example.com
            secret_file: "$CREDENTIALS_DIRECTORY/shop"
            group: web5
            schedules: [{name: nightly, cron: "@daily"}]
        """,
        ["sites[0].group: unknown group 'web5' (defined groups: web3, web4) (line 7)"],
    ),
    "bad URLs": (
        """
        sites:
          - name: shop
            url: ftp://shop.example.com
            secret_file: "$CREDENTIALS_DIRECTORY/shop"
            schedules: [{name: nightly, cron: "@daily"}]
          - name: blog
            url: "https://admin:hunter2@blog.example.com"
            secret_file: "$CREDENTIALS_DIRECTORY/shop"
            schedules: [{name: nightly, cron: "@daily"}]
          - name: solo
            url: "https://solo.example.com/?_akeebaAuth=hunter2"
            secret_file: "$CREDENTIALS_DIRECTORY/shop"
            schedules: [{name: nightly, cron: "@daily"}]
        """,
        [
            "sites[0].url: url must start with http:// or https:// (line 3)",
            "sites[1].url: url must not contain credentials (user:password@): "
            "the API secret goes in secret_file (line 7)",
            "sites[2].url: url must not have a query string (?...): "
            "give the site's base URL (line 11)",
        ],
    ),
    "both and neither secret_file and secret_env": (
        """
        sites:
          - name: shop
            url: https://shop.example.com
            secret_file: "$CREDENTIALS_DIRECTORY/shop"
            secret_env: BLOG_SECRET
            schedules: [{name: nightly, cron: "@daily"}]
          - name: blog
            url: https://blog.example.com
            schedules: [{name: nightly, cron: "@daily"}]
        """,
        [
            "sites[0].secret_env: set only one of secret_file and secret_env (line 5)",
            "sites[1]: the site needs its API secret: set secret_file or secret_env (line 7)",
        ],
    ),
    "missing secret environment variable": (
        """
        sites:
          - name: shop
            url: https://shop.example.com
            secret_env: SHOP_SECRET
            schedules: [{name: nightly, cron: "@daily"}]
        """,
        ["sites[0].secret_env: environment variable SHOP_SECRET is not set (line 4)"],
    ),
    "secret pasted where a file name or variable name goes": (
        """
        sites:
          - name: shop
            url: https://shop.example.com
            secret_env: "s3cr3t-env-value"
            schedules: [{name: nightly, cron: "@daily"}]
          - name: blog
            url: https://blog.example.com
            secret_file: "s3cr3t-shop-value"
            schedules: [{name: nightly, cron: "@daily"}]
          - name: solo
            url: https://solo.example.com
            secret_file: 123456789
            schedules: [{name: nightly, cron: "@daily"}]
        """,
        [
            "sites[0].secret_env: secret_env must be the name of an environment variable "
            "([A-Za-z_][A-Za-z0-9_]*), not the secret itself (line 4)",
            "sites[1].secret_file: secret_file must be an absolute path, or start with "
            "$CREDENTIALS_DIRECTORY/ or %d/ (line 8)",
            "sites[2].secret_file: expected a string, got a number (not shown: secret_file "
            "names where the secret is, and never holds the secret itself) (line 12)",
        ],
    ),
    "YAML 1.1 traps": (
        """
        defaults:
          misfire_grace: 22:30
          verify: on
          jitter: 1:30
        sites:
          - name: shop
            url: https://shop.example.com
            secret_file: "$CREDENTIALS_DIRECTORY/shop"
            tls_verify: off
            labels: {answer: y}
            schedules: [{name: nightly, cron: "@daily"}]
        """,
        [
            "defaults.misfire_grace: unquoted '22:30' is the base-60 number 1350 in YAML 1.1: "
            'quote it ("22:30") (line 2)',
            "defaults.verify: unquoted 'on' is the boolean true in YAML 1.1: write true or "
            'false, or quote it ("on") if you mean the text (line 3)',
            "defaults.jitter: unquoted '1:30' is the base-60 number 90 in YAML 1.1: "
            'quote it ("1:30") (line 4)',
            "sites[0].tls_verify: unquoted 'off' is the boolean false in YAML 1.1: write true or "
            'false, or quote it ("off") if you mean the text (line 9)',
        ],
    ),
    "YAML syntax error": (
        """
        sites:
          - name: shop
            url: https://shop.example.com
           secret_file: "$CREDENTIALS_DIRECTORY/shop"
        """,
        [
            "invalid YAML at column 4: expected <block end>, but found '<block mapping start>' "
            "(while parsing a block collection at line 2) (line 4)",
        ],
    ),
    "unquoted cron expression": (
        """
        sites:
          - name: shop
            url: https://shop.example.com
            secret_file: "$CREDENTIALS_DIRECTORY/shop"
            schedules: [{name: nightly, cron: */5 * * * *}]
        """,
        [
            "invalid YAML at column 40: expected alphabetic or numeric character, but found '/' "
            "(while scanning an alias at line 5); quote values that start with * or @, "
            'e.g. cron: "*/5 * * * *" (line 5)',
        ],
    ),
    "non-loopback listen without a token": (
        "listen: '0.0.0.0:9489'\nsites:" + SITE.format(name="shop"),
        [
            "listen: listening on 0.0.0.0, which is not a loopback address, needs "
            "api_token_file: without a token anyone who reaches the port can start and cancel "
            "backups (line 1)",
        ],
    ),
    "bad listen, limits and durations": (
        "listen: localhost\nlimits: {max_concurrent: 0}\n"
        "defaults: {run_timeout: 0, step_retries: 21, request_timeout: 5 minutes, jitter: -1s}\n"
        "sites:" + SITE.format(name="shop"),
        [
            "listen: invalid listen address 'localhost': write \"host:port\", e.g. "
            '"127.0.0.1:9489" or "[::1]:9489" (line 1)',
            "limits.max_concurrent: must be at least 1, got 0 (line 2)",
            # one line, so in the models' field order
            "defaults.request_timeout: invalid duration '5 minutes': write seconds as a number, "
            "or a string like 90s, 30m, 6h, 1d, 1h30m, 500ms (line 3)",
            "defaults.run_timeout: must be more than 0, got 0 (line 3)",
            "defaults.step_retries: must be at most 20, got 21 (line 3)",
            "defaults.jitter: negative duration '-1s': durations are 0 or more (line 3)",
        ],
    ),
    "platform and endpoint disagree": (
        """
        sites:
          - name: shop
            url: https://shop.example.com
            secret_file: "$CREDENTIALS_DIRECTORY/shop"
            platform: custom
            schedules: [{name: nightly, cron: "@daily"}]
          - name: blog
            url: https://blog.example.com
            secret_file: "$CREDENTIALS_DIRECTORY/shop"
            platform: wordpress
            endpoint: https://blog.example.com/api
            schedules: [{name: nightly, cron: "@daily"}]
        """,
        [
            "sites[0].platform: platform custom needs endpoint: the full URL of the site's "
            "JSON API (line 5)",
            "sites[1].endpoint: endpoint is only used with platform custom (platform is "
            "wordpress): remove it, or set platform: custom (line 11)",
        ],
    ),
    "no sites": (
        "listen: '127.0.0.1:9489'\n",
        ["sites: no sites configured: add sites, or include files that hold them (line 1)"],
    ),
    "empty file": (
        "",
        ["sites: no sites configured: add sites, or include files that hold them"],
    ),
    "the file is a list": (
        "- a\n- b\n",
        ["the file must be a mapping of keys, got a list (line 1)"],
    ),
    "nested too deeply": (
        "sites: " + "[" * 5000 + "]" * 5000 + "\n",
        ["invalid YAML: nested too deeply"],
    ),
}


@pytest.mark.parametrize(("text", "expected"), ERROR_CASES.values(), ids=ERROR_CASES.keys())
def test_errors_are_all_reported_with_path_and_line(
    tmp_path: Path, environ: dict[str, str], text: str, expected: list[str]
) -> None:
    """Each mistake is one issue naming its path and line, and no other issue is raised."""
    error = load_error(write(tmp_path, text), environ)
    assert issue_lines(error) == expected


def test_group_or_world_readable_secret_file_is_refused(
    tmp_path: Path, environ: dict[str, str], credentials: Path
) -> None:
    """A 0644 secret file is refused, named with its mode, and its content is never shown."""
    path = write(
        tmp_path,
        """
        sites:
          - name: blog
            url: https://blog.example.com
            secret_file: "$CREDENTIALS_DIRECTORY/blog-open"
            schedules: [{name: nightly, cron: "@daily"}]
        """,
    )
    error = load_error(path, environ)
    secret_path = credentials / "blog-open"
    assert issue_lines(error) == [
        f"sites[0].secret_file: secret file {secret_path} is readable by group/others "
        f"(mode 0644): run chmod 600 {secret_path} (line 4)"
    ]


def test_missing_secret_file_and_credentials_directory(
    tmp_path: Path, environ: dict[str, str], credentials: Path
) -> None:
    """A secret file that does not exist, and $CREDENTIALS_DIRECTORY unset, are both reported."""
    path = write(
        tmp_path,
        """
        api_token_file: "%d/api-token"
        sites:
          - name: shop
            url: https://shop.example.com
            secret_file: "$CREDENTIALS_DIRECTORY/nope"
            schedules: [{name: nightly, cron: "@daily"}]
        """,
    )
    error = load_error(path, environ)
    assert issue_lines(error) == [
        f"sites[0].secret_file: secret file {credentials / 'nope'} does not exist (line 5)"
    ]
    error = load_error(path, {"BLOG_SECRET": ENV_SECRET})
    assert issue_lines(error) == [
        "api_token_file: api_token_file uses $CREDENTIALS_DIRECTORY, which is not set: "
        "LoadCredential= in the unit sets it (line 1)",
        "sites[0].secret_file: secret_file uses $CREDENTIALS_DIRECTORY, which is not set: "
        "LoadCredential= in the unit sets it (line 5)",
    ]


def test_non_loopback_listen_with_token_is_accepted(
    tmp_path: Path, environ: dict[str, str]
) -> None:
    """With api_token_file set, listening on all addresses is allowed."""
    text = "listen: '0.0.0.0:9489'\napi_token_file: '%d/api-token'\nsites:" + SITE.format(name="a")
    config = load_config(write(tmp_path, text), environ)
    assert (config.listen_host, config.listen_port) == ("0.0.0.0", 9489)
    assert config.api_token is not None


def test_errors_in_included_files_are_located_there(
    tmp_path: Path, environ: dict[str, str]
) -> None:
    """An issue in an included file names that file, its own path in it and its own line."""
    included = write(
        tmp_path,
        """
        - name: alpha
          url: https://alpha.example.com
          secret_file: "$CREDENTIALS_DIRECTORY/shop"
          group: web9
          schedules:
            - name: nightly
              cron: "H 25 * * *"
        - name: shop
          url: https://shop.example.com
          secret_env: BLOG_SECRET
          schedules: [{name: nightly, cron: "@daily", bogus: 1}]
        """,
        "sites.d/alpha.yaml",
    )
    broken = write(tmp_path, "name: [unclosed\n", "sites.d/broken.yaml")
    path = write(
        tmp_path,
        "include: [sites.d/*.yaml]\nlimits: {groups: {web3: 1}}\nsites:" + SITE.format(name="shop"),
    )
    error = load_error(path, environ)
    assert issue_lines(error) == [
        f"{included}: [0].group: unknown group 'web9' (defined groups: web3) (line 4)",
        f"{included}: [0].schedules[0].cron: invalid cron expression 'H 25 * * *': "
        "hour 25 is out of range 0-23 (line 7)",
        f"{included}: [1].name: duplicate site name 'shop' (first at {path} line 4) (line 8)",
        f"{included}: [1].schedules[0].bogus: unknown key 'bogus' (line 11)",
        f"{broken}: invalid YAML at column 1: expected ',' or ']', but got '<stream end>' "
        "(while parsing a flow sequence at line 1) (line 2)",
    ]
    assert all(issue.included for issue in error.issues)
    assert {issue.file for issue in error.issues} == {included, broken}


def test_no_error_message_contains_a_secret(tmp_path: Path, environ: dict[str, str]) -> None:
    """Secrets read from files and the environment never reach a message, even next to errors."""
    path = write(
        tmp_path,
        """
        listen: 0.0.0.0:1
        sites:
          - name: shop
            url: https://shop.example.com
            secret_file: "$CREDENTIALS_DIRECTORY/shop"
            schedules: [{name: nightly, cron: "H 25 * * *"}]
          - name: blog
            url: https://blog.example.com
            secret_env: BLOG_SECRET
            secret_file: "$CREDENTIALS_DIRECTORY/blog-open"
            schedules: [{name: nightly, cron: "@daily"}]
          - name: other
            url: https://other.example.com
            secret_file: "$CREDENTIALS_DIRECTORY/blog-open"
            schedules: [{name: nightly, cron: "@daily"}]
        """,
    )
    error = load_error(path, environ)  # asserts the absence of every secret
    assert len(error.issues) == 4


# --- the example --------------------------------------------------------------------------------


@pytest.fixture
def example_environ(tmp_path: Path) -> dict[str, str]:
    """A credentials directory with the example's secrets, and its secret_env variable."""
    directory = tmp_path / "credentials"
    directory.mkdir()
    for name in ("api-token", "joomla-shop", "solo-archive"):
        secret = directory / name
        secret.write_text(f"{SHOP_SECRET}-{name}\n")
        secret.chmod(0o600)
    return {"CREDENTIALS_DIRECTORY": str(directory), "AKEEBA_SECRET_WP_BLOG": ENV_SECRET}


def load_example(tmp_path: Path, environ: dict[str, str]) -> Config:
    """Return config/example.yaml loaded from a copy in ``tmp_path`` (its include finds none)."""
    return load_config(write(tmp_path, EXAMPLE.read_text(), "example.yaml"), environ)


def test_example_loads(tmp_path: Path, example_environ: dict[str, str]) -> None:
    """config/example.yaml is valid: three sites, the schedules the comments describe."""
    config = load_example(tmp_path, example_environ)
    assert [site.name for site in config.sites] == ["joomla-shop", "wp-blog", "solo-archive"]
    shop, blog, solo = config.sites
    assert [(s.name, s.profile) for s in shop.schedules] == [("nightly", 1), ("hourly-db", 2)]
    assert shop.secret.reveal() == f"{SHOP_SECRET}-joomla-shop"
    assert blog.group == "web3"
    assert blog.secret.reveal() == ENV_SECRET
    assert solo.platform is Platform.CUSTOM
    assert solo.endpoint is not None
    assert config.api_token is not None


def _file_models(model: type[BaseModel]) -> set[type[BaseModel]]:
    """Return ``model`` and every model nested in its fields' annotations."""
    found = {model}

    def walk(annotation: object) -> None:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if annotation not in found:
                found.update(_file_models(annotation))
            return
        if get_origin(annotation) is not None:  # list[...], dict[...], X | None, Annotated
            for argument in get_args(annotation):
                walk(argument)

    for field in model.model_fields.values():
        walk(field.annotation)
    return found


def test_example_names_every_key(tmp_path: Path, example_environ: dict[str, str]) -> None:
    """Every field of every file model is written as a key in config/example.yaml."""
    load_example(tmp_path, example_environ)
    text = EXAMPLE.read_text()
    models = _file_models(ConfigFile)
    assert {model.__name__ for model in models} >= {
        "ConfigFile",
        "SettingsFile",
        "LimitsFile",
        "SiteFile",
        "ScheduleFile",
    }
    missing = sorted(
        f"{model.__name__}.{name}"
        for model in models
        for name in model.model_fields
        # A key of another mode (the postgresql state keys) may be shown commented out.
        if not re.search(rf"^\s*(# )?(- )?{re.escape(name)}:", text, re.MULTILINE)
    )
    assert missing == [], f"config/example.yaml lacks these keys: {missing}"


# --- the schema ---------------------------------------------------------------------------------


def test_schema_file_is_current() -> None:
    """config/schema.json is exactly what the models generate today."""
    result = subprocess.run(
        [sys.executable, "-m", "akeeba_backupd.config", "--schema"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stderr == ""
    assert result.stdout == SCHEMA.read_text(), (
        "config/schema.json is stale: run "
        "`.venv/bin/python -m akeeba_backupd.config --schema > config/schema.json`"
    )


def test_schema_mirrors_the_models() -> None:
    """The schema lists the file's top-level keys and forbids unknown ones, as the loader does."""
    schema = json.loads(SCHEMA.read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert set(schema["properties"]) == set(ConfigFile.model_fields)
    assert schema["additionalProperties"] is False
    assert schema["$defs"]["SiteFile"]["required"] == ["name", "url", "schedules"]


def test_schema_command_refuses_other_arguments() -> None:
    """Anything but --schema prints the usage on stderr, nothing on stdout, and exits 2."""
    result = subprocess.run(
        [sys.executable, "-m", "akeeba_backupd.config", "--scheme"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert "usage: python -m akeeba_backupd.config --schema" in result.stderr


# --- fuzzing ------------------------------------------------------------------------------------

_NOISE = ":-[]{}#&*!|>'\"%@`,? \t0123456789HTYN.~/\\"


@st.composite
def mutated_example(draw: st.DrawFn) -> str:
    """Return config/example.yaml's text with one to four random edits."""
    return _mutate(draw, EXAMPLE.read_text(), _NOISE)


def _mutate(draw: st.DrawFn, text: str, noise: str) -> str:
    """Return ``text`` with one to four random line edits, inserting characters of ``noise``."""
    lines = text.split("\n")
    for _ in range(draw(st.integers(1, 4))):
        index = draw(st.integers(0, len(lines) - 1))
        line = lines[index]
        edit = draw(st.sampled_from(["delete", "swap", "indent", "dedent", "insert", "repeat"]))
        column = draw(st.integers(0, max(len(line) - 2, 0)))
        if edit == "delete":
            del lines[index]
        elif edit == "swap" and len(line) >= 2:
            lines[index] = line[:column] + line[column + 1] + line[column] + line[column + 2 :]
        elif edit == "indent":
            lines[index] = " " * draw(st.integers(1, 3)) + line
        elif edit == "dedent":
            lines[index] = line[draw(st.integers(1, 3)) :]
        elif edit == "insert":
            lines[index] = line[:column] + draw(st.sampled_from(noise)) + line[column:]
        else:
            lines.insert(index, lines[draw(st.integers(0, len(lines) - 1))])
    return "\n".join(lines)


@settings(
    deadline=None,
    max_examples=150,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(text=mutated_example())
def test_mutated_example_raises_only_config_error(
    tmp_path: Path, example_environ: dict[str, str], text: str
) -> None:
    """Whatever a random edit does to the example, load_config succeeds or raises ConfigError."""
    path = tmp_path / "fuzzed.yaml"
    path.write_text(text)
    try:
        load_config(path, example_environ)
    except ConfigError as error:
        failure: ConfigError | None = error
    else:
        failure = None
    if failure is not None:
        assert_no_secret(str(failure))
        assert all(issue.message for issue in failure.issues)


# Every problem line `check` prints: where (a key path, or "invalid YAML at column N"), what,
# and "(line N)".
_PROBLEM_LINE = re.compile(r"^.+: .+ \(line \d+\)$")


@settings(
    deadline=None,
    max_examples=100,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(text=mutated_example())
def test_check_on_a_mutated_example_exits_0_or_2_naming_each_problem(
    tmp_path: Path,
    example_environ: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    text: str,
) -> None:
    """`akeeba-backupd check` on a randomly edited example never crashes: exit 0 with an OK
    line, or exit 2 listing each problem with its key path and line, and the file's name."""
    for name, value in example_environ.items():
        monkeypatch.setenv(name, value)
    path = tmp_path / "fuzzed.yaml"
    path.write_text(text)
    capsys.readouterr()
    code = cli.main(["check", "--config", str(path)])
    out, err = capsys.readouterr()
    assert code in (EXIT_OK, EXIT_CONFIG), (code, out, err)
    if code == EXIT_OK:
        assert out.startswith(f"{path}: OK")
        return
    *problems, summary = err.strip().split("\n")
    assert summary.startswith(f"akeeba-backupd: {path}: ")
    assert problems
    for problem in problems:
        assert _PROBLEM_LINE.match(problem), problem
    assert_no_secret(err)


# --- the state block ------------------------------------------------------------------------------

STATE_SITES = """
sites:
  - name: shop
    url: https://shop.example.com
    secret_file: "$CREDENTIALS_DIRECTORY/shop"
    schedules: [{name: nightly, cron: "@daily"}]
"""


def test_postgresql_state_resolves_with_its_dsn_file(
    tmp_path: Path, environ: dict[str, str], credentials: Path
) -> None:
    """The DSN is read from its 0600 file (a secret: never shown), the lease and instance kept."""
    dsn = credentials / "database"
    dsn.write_text("postgresql://akeeba:db-pass-9@db.example.org/akeeba\n")
    dsn.chmod(0o600)
    state_block = (
        'state: {backend: postgresql, dsn_file: "%d/database", instance: backup-2,'
        " lease_duration: 45s}\n"
    )
    path = write(tmp_path, state_block + STATE_SITES.lstrip("\n"))
    state = load_config(path, environ).state
    assert state.backend is StateBackend.POSTGRESQL
    assert state.dsn is not None
    assert state.dsn.reveal() == "postgresql://akeeba:db-pass-9@db.example.org/akeeba"
    assert "db-pass-9" not in repr(state)
    assert (state.instance, state.lease_seconds, state.dsn_file) == ("backup-2", 45.0, dsn)


def test_sqlite_state_is_the_default(tmp_path: Path, environ: dict[str, str]) -> None:
    state = load_config(write(tmp_path, STATE_SITES), environ).state
    assert state.backend is StateBackend.SQLITE
    assert state.dsn is None
    assert state.lease_seconds == 30.0
    assert state.instance


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        (
            "state: {backend: postgresql}",
            [
                "state.backend: backend postgresql needs state.dsn_file: the file holding the "
                "connection string, e.g. postgresql://akeeba@db.example.org/akeeba (line 1)"
            ],
        ),
        (
            'state: {dsn_file: "%d/shop", lease_duration: 10s}',
            [
                "state.dsn_file: dsn_file applies to backend postgresql only (backend is sqlite) "
                "(line 1)",
                "state.lease_duration: lease_duration applies to backend postgresql only "
                "(backend is sqlite) (line 1)",
            ],
        ),
        (
            'state: {backend: postgresql, dsn_file: "%d/shop", lease_duration: 2s}',
            [
                "state.lease_duration: must be at least 3s: renewals go out every third of it "
                "(line 1)"
            ],
        ),
        (
            "state: {backend: mysql}",
            ["state.backend: invalid value 'mysql': expected 'sqlite' or 'postgresql' (line 1)"],
        ),
    ],
)
def test_state_mistakes_are_reported_with_path_and_line(
    tmp_path: Path, environ: dict[str, str], block: str, expected: list[str]
) -> None:
    error = load_error(write(tmp_path, block + "\n" + STATE_SITES.lstrip("\n")), environ)
    assert issue_lines(error) == expected


# --- libyaml and the pure-Python parser agree ---------------------------------------------------


def _load_outcome(path: Path, environ: dict[str, str], *, libyaml: bool) -> Config | str:
    """Return the Config loaded from ``path``, or its error as printed; ``libyaml=False`` makes
    the loader use PyYAML's pure-Python parser only (as it did before libyaml was used)."""
    from akeeba_backupd import config as config_module

    with pytest.MonkeyPatch.context() as patch:
        if not libyaml:
            patch.setattr(config_module, "_CSAFE_LOADER", None)
        try:
            return load_config(path, environ)
        except ConfigError as error:
            return str(error)


def _libyaml_example() -> str:
    """Return config/example.yaml without the lines that send it to the pure-Python parser."""
    from akeeba_backupd.config import _libyaml_agrees

    lines = EXAMPLE.read_text().split("\n")
    return "\n".join(line for line in lines if _libyaml_agrees(line))


@st.composite
def mutated_libyaml_example(draw: st.DrawFn) -> str:
    """Return the libyaml-friendly example with one to four random edits (as mutated_example)."""
    noise = "".join(character for character in _NOISE if character not in "\t?|>%")
    return _mutate(draw, _libyaml_example(), noise)


@settings(
    deadline=None,
    max_examples=150,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(text=mutated_libyaml_example())
def test_libyaml_and_pure_python_parsing_give_the_same_config_or_errors(
    tmp_path: Path, example_environ: dict[str, str], text: str
) -> None:
    """Whatever a random edit does, the config (or every error, with its line and column) is
    the same whether libyaml composes the YAML or PyYAML's pure-Python parser does."""
    path = tmp_path / "fuzzed.yaml"
    path.write_text(text)
    fast = _load_outcome(path, example_environ, libyaml=True)
    assert fast == _load_outcome(path, example_environ, libyaml=False)


def test_libyaml_example_takes_the_libyaml_path_and_loads_the_same(
    tmp_path: Path, example_environ: dict[str, str]
) -> None:
    """The example minus its '?' and '<…>' lines goes to libyaml, with the same result."""
    from akeeba_backupd.config import _libyaml_agrees

    text = _libyaml_example()
    assert _libyaml_agrees(text)
    path = write(tmp_path, text, "example.yaml")
    fast = _load_outcome(path, example_environ, libyaml=True)
    assert fast == _load_outcome(path, example_environ, libyaml=False)


def test_libyaml_path_keeps_lines_and_yaml11_traps(tmp_path: Path, environ: dict[str, str]) -> None:
    """Plain scalars from libyaml (style "" rather than None) are still checked for YAML 1.1
    traps, and every issue keeps its line."""
    from akeeba_backupd.config import _libyaml_agrees

    text = """
    sites:
      - name: shop
        url: "https://shop.example.com"
        secret_file: $CREDENTIALS_DIRECTORY/shop
        verify: yes
        schedules:
          - name: nightly
            cron: "0 2 * * *"
            profile: 0
          -
          - name: lunch
            cron: "0 12 * * *"
            jitter: 1:30
    """
    assert _libyaml_agrees(textwrap.dedent(text))
    path = write(tmp_path, text)
    error = load_error(path, environ)
    assert issue_lines(error) == [
        "sites[0].verify: unquoted 'yes' is the boolean true in YAML 1.1: write true or false, "
        'or quote it ("yes") if you mean the text (line 5)',
        "sites[0].schedules[0].profile: must be at least 1, got 0 (line 9)",
        "sites[0].schedules[1]: expected a mapping, got null (line 10)",
        "sites[0].schedules[2].jitter: unquoted '1:30' is the base-60 number 90 in YAML 1.1: "
        'quote it ("1:30") (line 13)',
    ]
    assert str(error) == _load_outcome(path, environ, libyaml=False)


@pytest.mark.parametrize(
    "text",
    [
        "listen:\t'127.0.0.1:9489'\n",  # libyaml takes a tab as a separator
        "sites:\n  - name: shop\n    labels: {tier?: gold}\n",  # and '?' in a flow mapping
        "defaults:\n  jitter: |# note\n    1s\n",  # and a comment right after '|'
        "%YAML 1.3\n---\nsites: []\n",  # and refuses a YAML 1.3 directive
        "sites: " + "[" * 600 + "]" * 600 + "\n",
    ],
    ids=["tab", "question mark", "block scalar comment", "yaml 1.3", "deep nesting"],
)
def test_texts_libyaml_reads_differently_go_to_the_pure_python_parser(
    tmp_path: Path, environ: dict[str, str], text: str
) -> None:
    """Where libyaml and PyYAML disagree, the message is PyYAML's, as it always was."""
    from akeeba_backupd.config import _libyaml_agrees

    assert not _libyaml_agrees(text)
    path = write(tmp_path, text)
    assert _load_outcome(path, environ, libyaml=True) == _load_outcome(path, environ, libyaml=False)


def test_schedules_without_settings_share_their_sites_settings(
    tmp_path: Path, environ: dict[str, str]
) -> None:
    """A schedule (or site) that sets no run setting has exactly its parent's settings."""
    path = write(
        tmp_path,
        """
        defaults:
          timezone: Europe/Amsterdam
        sites:
          - name: shop
            url: "https://shop.example.com"
            secret_file: $CREDENTIALS_DIRECTORY/shop
            schedules:
              - name: plain
                cron: "0 2 * * *"
              - name: own
                cron: "0 3 * * *"
                jitter: 5m
          - name: blog
            url: "https://blog.example.com"
            secret_env: BLOG_SECRET
            stall_timeout: 1h
            schedules:
              - name: plain
                cron: "0 4 * * *"
              - name: explicit-null
                cron: "0 5 * * *"
                timezone: null
        """,
    )
    shop, blog = load_config(path, environ).sites
    assert shop.schedules[0].settings == shop.settings
    assert shop.settings.timezone == ZoneInfo("Europe/Amsterdam")
    assert shop.schedules[1].settings.jitter_seconds == 300.0
    assert shop.schedules[1].settings.timezone == ZoneInfo("Europe/Amsterdam")
    assert shop.settings.jitter_seconds == 0.0
    assert blog.settings.stall_timeout_seconds == 3600.0
    assert shop.settings.stall_timeout_seconds == 1800.0
    assert blog.schedules[0].settings == blog.settings
    assert blog.schedules[1].settings == blog.settings
