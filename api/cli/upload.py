"""``relaypacs upload``: a clinic folder sent to a gateway over HTTP; the terminal side
(progress, final table, exit code) is in api/cli/upload_view.py."""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--server", required=True, help="gateway base URL, e.g. https://gateway.example")
@click.option("--token", required=True, envvar="RELAYPACS_TOKEN", help="API token (or RELAYPACS_TOKEN)")
# 8: over a clinic link (20 Mbit/s, 80 ms) a small file is mostly waiting for its round trip,
# so files in flight, not CPU, set the pace (tests/bench/test_bench_clinic_link.py).
@click.option("--jobs", default=8, show_default=True, type=click.IntRange(1, 32), help="parallel files")
@click.option("--chunk-size", default=1024 * 1024, show_default=True, type=click.IntRange(1024))
@click.option("--label", help="batch label shown to the hospital")
@click.option("--state", "state_file", type=click.Path(dir_okay=False, path_type=Path),
              help="resume file (default: under ~/.local/state/relaypacs)")
@click.option("--wait", default=600, show_default=True, type=int,
              help="seconds to follow the batch after upload (0: do not wait)")
@click.option("--template", help="name of an upload template to apply to the batch")
@click.option("--override", "override_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="per-patient values: CSV (PatientID + keyword columns) or JSON")
def upload(folder: Path, server: str, token: str, jobs: int, chunk_size: int, label: str | None,
           state_file: Path | None, wait: int, template: str | None,
           override_file: Path | None) -> None:
    """Upload a clinic folder with progress and resume; exit 0 only when all was delivered."""
    from api.cli.upload_view import run_upload

    sys.exit(run_upload(folder, server, token, jobs=jobs, chunk_size=chunk_size, label=label,
                        state_file=state_file, wait=wait, template=template,
                        override_file=override_file))
