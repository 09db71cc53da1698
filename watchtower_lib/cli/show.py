"""``watchtower show``: what the reader makes of one file (format, log type, schema, first rows).

Why: before ingesting a log from a new sensor, an analyst wants to see that
the columns and types come out right; this parses only the first rows (the
reader still scans a TSV file's headers once: 2.3 s for a 224 MB conn.log).
"""
from __future__ import annotations

from pathlib import Path

import click

from .ingest import format_table


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--rows", "-n", "n_rows", type=click.IntRange(min=0), default=10, show_default=True,
              help="How many rows to print.")
def show(file: Path, n_rows: int) -> None:
    """Show how Watch Tower reads one Zeek log: detected format, log type,
    each column with its Zeek type and pandas dtype, and the first rows.

    Parses only the first rows. A file that is not a Zeek log gives one line
    saying why, and exit status 2.
    """
    import pandas as pd

    from .. import zeek

    batches = zeek.iter_batches(file, batch_rows=max(n_rows, 1))
    first = next(batches, None)
    close = getattr(batches, "close", None)  # a generator: stop reading the rest of the file
    if close is not None:
        close()
    if first is None:  # header only: the whole file is tiny, read it for its columns
        table = zeek.read_arrow(file)
    else:
        import pyarrow as pa

        table = pa.Table.from_batches([first])
    meta = table.schema.metadata or {}
    fmt = meta.get(b"zeek_format", b"?").decode()
    with open(file, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    df = zeek.to_pandas(table)
    click.echo(f"file:     {file}")
    click.echo(f"format:   Zeek {fmt.upper()}{' (gzip)' if gz else ''}")
    click.echo(f"log type: {zeek.log_type(file) or '?'}")
    click.echo("")
    click.echo(format_table(["column", "zeek type", "dtype"],
                            [(f.name, zeek.zeek_type_of(f), str(df[f.name].dtype)) for f in table.schema]))
    click.echo("")
    if first is None:
        click.echo("(no rows: the file has a header only)")
        return
    with pd.option_context("display.max_columns", None, "display.width", 200, "display.max_colwidth", 40):
        click.echo(df.head(n_rows).to_string())
