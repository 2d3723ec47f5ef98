"""A tiny domain plugin for Flywheel: unit conversions answered as JSON (docs/domains.md)."""
