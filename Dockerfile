# The processor image. Configuration comes from the environment (the original service's
# variables) or from a pipeline YAML mounted at /etc/sqs-processor/pipeline.yaml.
FROM python:3.11-slim

WORKDIR /app
COPY pyproject.toml README.md ./
COPY core ./core
COPY plugins ./plugins
COPY configs ./configs
RUN pip install --no-cache-dir . && rm -rf /app/core /app/plugins /app/configs

USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["sqs-processor"]
CMD ["run"]
