# The two quick-start commands: `make serve` and `make test`. Both install what they
# need first, so they work on a fresh machine.
PYTHON ?= python3
PIP = $(PYTHON) -m pip install -q --disable-pip-version-check

.PHONY: install install-test serve test

install:
	$(PIP) -e . -e drivers/filesystem -e drivers/http

# The functional tests that run once more with each real backend as the default store.
CLIENT_TESTS = tests/functional/test_clients_glanceclient.py tests/functional/test_clients_openstacksdk.py \
	tests/functional/test_clients_cli.py

# Not run again through abbild-registry, as the registry is not what they test:
# - the metadefs client tests check the clients against the API's wire, which
#   test_metadefs.py covers route by route through the registry; the metadefs CLI
#   works on the database directly (its own test runs it against a registry service);
# - test_purge and test_audit run their commands with the API's database config (a
#   purge through a registry service is test_purge's own test); test_entry_points
#   runs the commands' startup, test_apache its own deployment, test_slow_clients the
#   server's guard in front of the app; the replicator copies between two APIs with
#   the calls the wire tests make through the registry.
NOT_AGAIN_OVER_HTTP = --ignore=tests/functional/test_metadefs_clients.py --ignore=tests/functional/test_metadefs_cli.py \
	--ignore=tests/functional/test_purge.py --ignore=tests/functional/test_audit.py \
	--ignore=tests/functional/test_entry_points.py --ignore=tests/functional/test_apache.py \
	--ignore=tests/functional/test_slow_clients.py --ignore=tests/functional/test_replicate.py

install-test:
	$(PIP) -e '.[test]' -e drivers/filesystem -e 'drivers/http[test]' -e 'drivers/vmware[test]' \
		-e drivers/s3 -e drivers/rbd -e drivers/swift -e tests/example_driver -e tests/example_plugin
	command -v apxs >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends apache2 apache2-dev curl >/dev/null; }
	$(PIP) mod_wsgi
	# qemu-img: the image_conversion import step and the tests' qcow2/vmdk/vhd images;
	# zstd: the decompression tests' data as the zstd command writes it
	command -v qemu-img >/dev/null && command -v zstd >/dev/null || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-utils zstd >/dev/null; }
	# xorriso and sgdisk: the format inspection tests' ISO, hybrid ISO and GPT images
	command -v xorriso >/dev/null && command -v sgdisk >/dev/null || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends xorriso gdisk >/dev/null; }

serve: install
	$(PYTHON) -m abbild_cmd.cli serve $(ARGS)

# Everything: unit, driver and functional tests on the embedded SQL registry; the
# functional tests again through a real abbild-registry; the client tests again with
# each real backend as the default store.
test: install-test
	bash tools/start-sql-servers.sh
	bash tools/start-rabbitmq.sh
	bash tools/keystone-up.sh >/dev/null
	# after Keystone: Barbican authenticates against it (signed images with certificates in Barbican)
	bash tools/barbican-up.sh >/dev/null
	PYTHON=$(PYTHON) bash tools/ceph-up.sh >/dev/null
	SWIFT_KEYSTONE=1 bash tools/swift-up.sh >/dev/null
	$(PYTHON) -m pytest -n 2 -q -rs
	ABBILD_TEST_REGISTRY=http $(PYTHON) -m pytest -n 2 -q -rs tests/functional $(NOT_AGAIN_OVER_HTTP)
	for store in s3 rbd swift vmware; do \
		ABBILD_TEST_STORE=$$store $(PYTHON) -m pytest -n 2 -q -rs -m 'not local_files' $(CLIENT_TESTS) || exit 1; \
	done
