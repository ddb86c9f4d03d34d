"""abbild-filesystem: an abbild store that keeps image data as files in one directory."""

__version__ = "0.1.0"
