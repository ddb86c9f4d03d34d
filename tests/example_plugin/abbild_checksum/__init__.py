"""An example abbild plugin: the ``example_checksum_property`` import step (see plugin.py)."""
