"""abbild-rbd: an abbild store that keeps image data as Ceph RBD images."""

__version__ = "0.1.0"
