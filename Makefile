SHELL := /bin/bash

PYTEST_ARGS ?=

.PHONY: install demo test test-fast test-vm bench bench-quick clean

install:
	bash scripts/install.sh

demo: install
	bash scripts/demo.sh

test: install
	.venv/bin/python -m pytest -q -p no:cacheprovider --durations=15 tests $(PYTEST_ARGS)

# Without the VM suite (tests/test_vm_runner.py boots a Debian 12 guest under qemu: minutes).
test-fast: install
	.venv/bin/python -m pytest -q -p no:cacheprovider tests --ignore tests/test_vm_runner.py $(PYTEST_ARGS)

# Only the NILFS2 suite, in the guest (the runner's own options: see vagrant/run-vm-tests).
test-vm: install
	vagrant/run-vm-tests tests/vm

# The benchmark suite (bench/run.py): full run writes bench/results/latest.{json,md} and plots.
bench: install
	.venv/bin/python bench/run.py $(BENCH_ARGS)

# A smoke run of the same suite, small sizes (< 3 min), into bench/results/quick/.
bench-quick: install
	.venv/bin/python bench/run.py --quick $(BENCH_ARGS)

clean:
	rm -rf .venv
