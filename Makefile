# The two set-up commands: `make run` and `make test`. Both create .venv and install into it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LOCAL_STAMP := $(VENV)/.installed-local
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: run emulator test lint validate docs send list bench clean

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

## test: the whole suite (moto server over real HTTP), plus lint
test: $(STAMP)
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

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
