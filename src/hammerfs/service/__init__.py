"""The boot-time service (layer 4 adapter): one TOML config says which volumes to unlock and
mount, which mirror streams to keep running and which PFSs the daily cleanup covers.
``config`` parses and validates it, ``supervisor`` is `hammer up` (mounts as `hammer mount`
daemons, streams as supervised `hammer mirror-stream` children), ``units`` renders the
systemd units.  The commands are in ``hammerfs.cli.service_cmds``."""
