# The two commands a new user needs: `make demo` and `make test`. Both install what they need into .venv.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
SAM_VENV := .venv-sam
SAM := $(SAM_VENV)/bin/sam
CHECKOV_VENV := .venv-checkov
export AWS_DEFAULT_REGION ?= us-east-1

.PHONY: pin demo test unit install lint typecheck lint-template checkov pytest clean pre-traffic-samples

# torch is installed first, pinned to the CPU build, so that nothing resolves an unpinned (CUDA) torch.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

# aws-sam-cli pins older boto3/pydantic: it lives in a virtualenv of its own.
$(SAM_VENV)/.installed:
	$(PYTHON) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/pip install --quiet 'aws-sam-cli==1.170.0'
	touch $@

# checkov pins older boto3 (1.35), networkx and packaging than .venv has: a virtualenv of its own too.
$(CHECKOV_VENV)/.installed:
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet 'checkov==3.3.30'
	touch $@

install: $(VENV)/.installed

# One pinned set of dependencies: constraints.txt (every install) and src/requirements.txt (the layer), written from
# .venv by `make pin` after a range in pyproject.toml changes.
pin: $(VENV)/.installed
	$(PY) tools/pin_dependencies.py

demo: $(VENV)/.installed
	$(VENV)/bin/ringfleet demo $(DEMO_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy

lint-template: $(VENV)/.installed $(SAM_VENV)/.installed
	$(VENV)/bin/cfn-lint template.yaml
	$(SAM) validate --lint --template template.yaml

# checkov on the template as CloudFormation deploys it (the SAM transform applied: the functions, their roles):
# fails on any finding not suppressed in template.yaml (Metadata: checkov: skip:, each with its reason). Offline:
# BC_SKIP_MAPPING keeps it from fetching Prisma Cloud's guideline links (no network here; they are only links).
checkov: $(SAM_VENV)/.installed $(CHECKOV_VENV)/.installed
	$(SAM_VENV)/bin/python tools/sam_translate.py template.yaml .aws-sam/checkov/template.json
	BC_SKIP_MAPPING=TRUE $(CHECKOV_VENV)/bin/checkov --quiet --compact --framework cloudformation -f .aws-sam/checkov/template.json

# tests/integration/test_layer.py builds the Lambda layer with sam. The kinds run fastest first (tests/conftest.py),
# PYTEST_WORKERS files at a time (pytest-xdist: each worker has its own broker vhost, local clouds and ports; most
# of an e2e test's time is spent waiting, so more workers than cores pay off); the 15 slowest tests are listed at
# the end, so a test that grew slow shows up in CI's log. PYTEST_WORKERS=0 runs them in one process. Three workers:
# the local cloud forks its agents, Lambda hosts and moto servers from warm interpreters (ringfleet_local.warm),
# which cut the CPU of the suite's processes by about 28 %; before that, three overloaded this 2-core machine on a
# slow day and the e2e tests that wait on training timed out, so two ran.
PYTEST_WORKERS ?= 3
pytest: $(VENV)/.installed $(SAM_VENV)/.installed
	$(VENV)/bin/pytest -q --durations=15 -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# The fast loop while editing: the unit tests alone (pure: no broker, no moto, no subprocess), well under a minute.
unit: $(VENV)/.installed
	$(VENV)/bin/pytest -q -m unit tests/unit $(PYTEST_ARGS)

test: lint typecheck lint-template checkov pytest

# The pre-traffic hook sends the samples of events/ it finds next to it (sam build packages a function's CodeUri
# only): refresh its copies after changing a sample. tests/unit/test_template.py fails while they differ.
pre-traffic-samples:
	for f in services/pre_traffic/samples/*.json; do cp "events/$$(basename "$$f")" "$$f"; done

clean:
	rm -rf $(VENV) $(SAM_VENV) $(CHECKOV_VENV) .aws-sam .ringfleet
