SHELL := /bin/bash

PYTEST_ARGS ?=

.PHONY: install demo test test-fast clean

install:
	bash scripts/install.sh

demo: install
	bash scripts/demo.sh

test: install
	.venv/bin/python -m pytest -q -p no:cacheprovider tests $(PYTEST_ARGS)

# For now identical to `test`; later this will skip the VM tests.
test-fast: install
	.venv/bin/python -m pytest -q -p no:cacheprovider tests $(PYTEST_ARGS)

clean:
	rm -rf .venv
