"""abbild-swift: an abbild store that keeps image data in OpenStack Swift."""

__version__ = "0.1.0"
