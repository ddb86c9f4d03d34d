"""abbild-vmware: an abbild store that keeps image data as files on vSphere datastores."""

__version__ = "0.1.0"
