"""The control plane: the one process that writes DuckDB (landing now; scheduler, registry
and console in later issues), with a small JSON API for the CLI and other processes."""
