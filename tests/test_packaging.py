"""The built wheel installs one package, `sqs_processor`, with its plugins and default config."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from helpers.support import ROOT


def test_wheel_holds_sqs_processor_only_and_the_default_config_is_found(tmp_path: Path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "--wheel-dir", str(wheels), str(ROOT)],
                   check=True, capture_output=True, timeout=180)
    (wheel,) = wheels.glob("sqs_processor-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        archive.extractall(tmp_path / "site")
    top_level = {name.split("/")[0] for name in names if not name.startswith("sqs_processor-")}
    assert top_level == {"sqs_processor"}  # nothing called core/ or plugins/ is installed
    for expected in ("sqs_processor/configs/default.yaml", "sqs_processor/configs/local.yaml",
                     "sqs_processor/configs/pipeline.schema.json",
                     "sqs_processor/plugins/s3_sink.py", "sqs_processor/hookspecs.py",
                     "sqs_processor/testing.py", "sqs_processor/pytest_plugin.py",
                     "sqs_processor/configs/examples/redact.yaml",
                     "sqs_processor/configs/examples/plugins/redact.py"):
        assert expected in names
    examples = {n for n in names if n.startswith("sqs_processor/configs/examples/")}
    shipped = {f"sqs_processor/configs/examples/{p.relative_to(ROOT / 'configs' / 'examples')}"
               for p in (ROOT / "configs" / "examples").rglob("*") if p.suffix in (".py", ".yaml")
               and "__pycache__" not in p.parts}
    assert examples == shipped
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    with zipfile.ZipFile(wheel) as archive:
        declared = archive.read(entry_points).decode()
    assert "sqs-processor = sqs_processor.cli:main" in declared
    assert "[pytest11]\nsqs_processor = sqs_processor.pytest_plugin" in declared

    # Run from the unpacked wheel, away from the source tree, with no --config.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SQS_", "S3_"))}
    env.update(PYTHONPATH=str(tmp_path / "site"), PYTHONNOUSERSITE="1",
               SQS_QUEUE_URL="https://sqs.us-west-1.amazonaws.com/123456789012/orders",
               S3_BUCKET_NAME="orders-archive")
    code = ("import sys, sqs_processor, sqs_processor.cli as c; "
            "assert '/site/' in sqs_processor.__file__, sqs_processor.__file__; "
            "sys.exit(c.main(['validate']))")
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert str(tmp_path / "site" / "sqs_processor" / "configs" / "default.yaml") in result.stdout
    assert "region us-west-1" in result.stdout

    # An installed example pipeline finds its drop-in plugins next to it.
    example = tmp_path / "site" / "sqs_processor" / "configs" / "examples" / "redact.yaml"
    code = f"import sys, sqs_processor.cli as c; sys.exit(c.main(['validate', '--config', " \
           f"{str(example)!r}]))"
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"redact (file {example.parent / 'plugins' / 'redact.py'})" in result.stdout
