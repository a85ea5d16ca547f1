"""The console server: many bridges from one config file, status, systemd."""
