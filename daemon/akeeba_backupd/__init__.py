"""akeeba-backupd: scheduled Akeeba Backup runs for many sites, watched by Prometheus."""

__version__ = "0.1.0"
