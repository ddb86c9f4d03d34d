"""An example abbild store driver (see driver.py)."""
