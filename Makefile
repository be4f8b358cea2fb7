# One entry point for people and CI. `make test` sets everything up (apt + .venv) and runs the suite.
.PHONY: setup test test-fast demo lint clean

setup:
	scripts/setup.sh

test: setup
	scripts/run_tests.sh

# the edit-test loop: no ROS processes, no long trainings (markers in test/conftest.py)
test-fast: setup
	scripts/run_tests.sh -m "not ros and not slow"

demo: setup
	scripts/run_demo.sh

lint: setup
	.venv/bin/flake8

clean:
	rm -rf .venv outputs build install log *.egg-info
