# The two set-up commands: `make run` and `make test`. Both create .venv and install into it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LOCAL_STAMP := $(VENV)/.installed-local
BENCH_STAMP := $(VENV)/.installed-bench
# checkov (tests/test_checkov.py) lives in its own environment: it pins older boto3 and
# packaging than the dev extra needs.
CHECKOV_VENV  := $(VENV)/checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed
CHECKOV_SPEC  := checkov>=3.2,<4
# npm-groovy-lint (tests/test_ci_files.py lints the Jenkinsfiles) from the npm registry, where
# npm is installed; it runs CodeNarc on Java. Without npm or Java the lint test skips.
GROOVY_LINT_DIR   := $(VENV)/node
GROOVY_LINT_STAMP := $(GROOVY_LINT_DIR)/.installed
GROOVY_LINT_SPEC  := npm-groovy-lint@14.4.0

.PHONY: run emulator test lint validate docs send list bench clean image image-test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall when the project metadata changes.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# `make run` needs only the emulator: the `local` extra, not the test tools.
$(LOCAL_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[local]'
	touch $(LOCAL_STAMP)

## run: the processor against the embedded SQS/S3 emulator (no AWS account needed)
##      make run [CONFIG=my-pipeline.yaml] [ARGS='--log-format json --no-samples']
run: $(LOCAL_STAMP)
	$(BIN)/python -m sqs_processor.local run $(if $(CONFIG),--config '$(CONFIG)') $(ARGS)

## emulator: the SQS/S3 emulator alone on 127.0.0.1:4566; prints the AWS_* variables to export
emulator: $(LOCAL_STAMP)
	$(BIN)/python -m sqs_processor.emulator

$(CHECKOV_STAMP): Makefile | $(BIN)/python
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet '$(CHECKOV_SPEC)'
	touch $(CHECKOV_STAMP)

$(GROOVY_LINT_STAMP): Makefile | $(BIN)/python
	@if command -v npm >/dev/null 2>&1; then \
	    npm install --prefix $(GROOVY_LINT_DIR) --no-audit --no-fund --silent '$(GROOVY_LINT_SPEC)'; \
	else \
	    echo "npm not found: the Jenkinsfile lint test will skip"; mkdir -p $(GROOVY_LINT_DIR); \
	fi
	touch $(GROOVY_LINT_STAMP)

## test: the whole suite (moto server over real HTTP), plus lint
test: $(STAMP) $(CHECKOV_STAMP) $(GROOVY_LINT_STAMP)
	$(BIN)/ruff check core plugins configs tests bench
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check core plugins configs tests bench

## validate: check every shipped config
validate: $(STAMP)
	@for f in configs/*.yaml configs/examples/*.yaml; do \
	  [ -e "$$f" ] || continue; \
	  echo "== $$f"; \
	  SQS_QUEUE_URL=https://sqs.us-west-1.amazonaws.com/123456789012/example \
	  S3_BUCKET_NAME=example-bucket $(BIN)/sqs-processor validate --config $$f || exit 1; \
	done

## docs: regenerate the README's configuration reference and configs/pipeline.schema.json
##       from the option declarations
docs: $(STAMP)
	$(BIN)/python -m sqs_processor.docs README.md
	$(BIN)/python -m sqs_processor.schema configs/pipeline.schema.json

## send BODY='...' [CONFIG=...]: send one message to the pipeline's queue while `make run` runs
send: $(LOCAL_STAMP)
	$(BIN)/python -m sqs_processor.local send $(if $(CONFIG),--config '$(CONFIG)') '$(BODY)'

## list [CONFIG=...]: list what `make run` archived
list: $(LOCAL_STAMP)
	$(BIN)/python -m sqs_processor.local list $(if $(CONFIG),--config '$(CONFIG)')

$(BENCH_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

## bench: throughput, CPU, memory and latency of sqs-processor against the spec's design and a
##        bare boto3 loop, on an emulator with injected latency (see bench/README.md)
##        make bench [N=20000] [LATENCY_MS=10,20] [BENCH_ARGS='--quick --profile --out f.json']
bench: $(BENCH_STAMP)
	$(BIN)/python -m bench $(if $(N),--n $(N)) $(if $(LATENCY_MS),--latency-ms $(LATENCY_MS)) $(BENCH_ARGS)

# ---- the image ----------------------------------------------------------------------------
VERSION  := $(shell sed -n 's/^version *= *"\([^"]*\)".*/\1/p' pyproject.toml | head -n 1)
REVISION := $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
ENGINE   ?= $(if $(shell command -v docker 2>/dev/null),docker,podman)
IMAGE    ?= sqs-processor:$(VERSION)-$(shell git rev-parse --short HEAD 2>/dev/null || echo local)
PYTHON_IMAGE ?=
ENGINE_FLAGS ?=
BUILD_FLAGS  ?=

## image: build the image with docker or podman (ENGINE=...), tagged IMAGE (default
##        sqs-processor:<version>-<commit>), on the Dockerfile's base unless PYTHON_IMAGE=...;
##        ENGINE_FLAGS go before the command, BUILD_FLAGS after it. Prints the image size.
image:
	$(ENGINE) $(ENGINE_FLAGS) build $(if $(filter podman,$(notdir $(ENGINE))),--format docker) \
	    $(BUILD_FLAGS) $(if $(PYTHON_IMAGE),--build-arg PYTHON_IMAGE=$(PYTHON_IMAGE)) \
	    --build-arg VERSION=$(VERSION) --build-arg REVISION=$(REVISION) \
	    --build-arg CREATED=$$(date -u +%Y-%m-%dT%H:%M:%SZ) --tag $(IMAGE) .
	@$(ENGINE) $(ENGINE_FLAGS) image inspect --format '{{.Size}}' $(IMAGE) \
	    | awk '{printf "image $(IMAGE): %.1f MB\n", $$1 / 1e6}'

## image-test: build the image with podman and run it as the pod spec does against the emulator
##             (tests/test_image.py); fails, rather than skips, where podman is missing
image-test: $(STAMP)
	SQS_PROCESSOR_IMAGE_TEST=required $(BIN)/python -m pytest -q -s tests/test_image.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
