"""abbild-s3: an abbild store that keeps image data as objects in an S3 bucket."""

__version__ = "0.1.0"
