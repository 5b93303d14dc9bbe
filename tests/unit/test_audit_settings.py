"""The ``[audit]`` settings: defaults, the standard ports, and bad values refused at start."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dicomnode.config import AuditSettings, load_settings
from dicomnode.errors import ConfigError


def test_forwarding_is_off_and_events_kept_a_year_by_default() -> None:
    audit = AuditSettings()

    assert (audit.syslog_host, audit.retention_days) == ("", 365)


@pytest.mark.parametrize(("tls", "port"), [(True, 6514), (False, 601)])
def test_port_zero_means_the_standard_syslog_port_of_the_transport(tls: bool, port: int) -> None:
    assert AuditSettings(syslog_host="collector", syslog_tls=tls).port == port
    assert AuditSettings(syslog_host="collector", syslog_tls=tls, syslog_port=1514).port == 1514


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ('syslog_ca = "ca.pem"', "syslog_ca: Value error, needs syslog_tls = true"),
        ('syslog_app_name = "two words"', "syslog_app_name: .*printable ASCII"),
        ('syslog_app_name = ""', "syslog_app_name: .*printable ASCII"),
        ("retention_days = -1", "retention_days: .*greater than or equal to 0"),
    ],
)
def test_a_bad_audit_value_stops_the_start_naming_the_section(
    tmp_path: Path, section: str, message: str
) -> None:
    path = tmp_path / "settings.toml"
    path.write_text(f"[audit]\n{section}\n", encoding="utf-8")

    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: \[audit\] {message}"):
        load_settings(path)
