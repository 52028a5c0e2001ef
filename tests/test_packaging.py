"""The built wheel installs one package, `sqs_processor`, with its plugins and default config."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from support import ROOT


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
                     "sqs_processor/plugins/s3_sink.py", "sqs_processor/hookspecs.py"):
        assert expected in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    with zipfile.ZipFile(wheel) as archive:
        assert "sqs-processor = sqs_processor.cli:main" in archive.read(entry_points).decode()

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
