"""Consoles people share: read-only viewers and console logs, tapped from the data path."""
