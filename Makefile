# kerneld — the two commands of the README, and a few helpers.
#   make run    set everything up, start the daemon on its embedded default config, try it
#   make test   set everything up, run the whole test suite
.PHONY: setup test-envs run test bench lint

setup:
	bash scripts/setup.sh

# the Jupyter clients and the Hypha server the tests drive (side environments; see the script)
test-envs:
	bash scripts/setup-test-envs.sh

run: setup
	bash scripts/run.sh

test: setup test-envs
	.venv/bin/python -m pytest -q

bench: setup test-envs
	.venv/bin/kerneld bench --quick

lint:
	.venv/bin/ruff check kerneld sandbox tests bench
	.venv/bin/mypy
