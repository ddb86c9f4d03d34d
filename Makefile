# The two quick-start commands: `make serve` and `make test`. Both install what they
# need first, so they work on a fresh machine.
PYTHON ?= python3
PIP = $(PYTHON) -m pip install -q --disable-pip-version-check

.PHONY: install install-test serve test

install:
	$(PIP) -e . -e drivers/filesystem

install-test:
	$(PIP) -e '.[test]' -e drivers/filesystem -e 'drivers/http[test]' -e 'drivers/vmware[test]'

serve: install
	$(PYTHON) -m abbild.cli serve $(ARGS)

test: install-test
	bash tools/start-sql-servers.sh
	bash tools/keystone-up.sh >/dev/null
	$(PYTHON) -m pytest -n 2 -q -rs
