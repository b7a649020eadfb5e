SHELL := /bin/bash

PYTEST_ARGS ?=

.PHONY: install install-test demo test test-fast test-pure test-vm bench bench-quick clean

# What zap needs.
install:
	bash scripts/install.sh

# Also what the tests and benchmarks use (real services, the VM suite's qemu, pytest).
install-test:
	bash scripts/install.sh --test

demo: install
	bash scripts/demo.sh

test: install-test
	.venv/bin/python -m pytest -q -p no:cacheprovider --durations=15 tests $(PYTEST_ARGS)

# Without the VM suite (tests/test_vm_runner.py boots a Debian 12 guest under qemu: minutes).
test-fast: install-test
	.venv/bin/python -m pytest -q -p no:cacheprovider tests --ignore tests/test_vm_runner.py $(PYTEST_ARGS)

# Only the tests that need neither root nor the real parts (seconds; any machine with the venv).
test-pure:
	.venv/bin/python -m pytest -q -p no:cacheprovider tests -m "not system" $(PYTEST_ARGS)

# Only the guest part: the NILFS2 suite and the reboot test (vagrant/run-vm-tests boots the guest).
test-vm: install-test
	.venv/bin/python -m pytest -q -p no:cacheprovider tests/test_vm_runner.py $(PYTEST_ARGS)

# The benchmark suite (bench/run.py): full run writes bench/results/latest.{json,md} and plots.
bench: install-test
	.venv/bin/python bench/run.py $(BENCH_ARGS)

# A smoke run of the same suite, small sizes (< 3 min), into bench/results/quick/.
bench-quick: install-test
	.venv/bin/python bench/run.py --quick $(BENCH_ARGS)

clean:
	rm -rf .venv
