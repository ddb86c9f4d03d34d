"""The Image API v2 (WebOb handlers), wire-compatible with OpenStack Glance."""
