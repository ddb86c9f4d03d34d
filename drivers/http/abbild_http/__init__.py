"""abbild-http: a read-only abbild store for image data that lives at http(s) URLs."""

__version__ = "0.1.0"
