"""The pipeline YAML files shipped with the package (read with importlib.resources)."""
