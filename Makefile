# kerneld — the two commands of the README, and a few helpers.
#   make run    set everything up, start the daemon on its embedded default config, try it
#   make test   set everything up, run the whole test suite
.PHONY: setup run test bench lint

setup:
	bash scripts/setup.sh

run: setup
	bash scripts/run.sh

test: setup
	.venv/bin/python -m pytest -q

bench: setup
	.venv/bin/kerneld bench --quick

lint:
	.venv/bin/ruff check kerneld sandbox tests bench
	.venv/bin/mypy
