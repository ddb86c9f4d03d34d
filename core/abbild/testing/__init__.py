"""Test helpers shipped with abbild, for its own tests and for third-party drivers."""
