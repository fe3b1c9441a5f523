"""The `mnas` command line, one module per area.

- `app`: the typer app and `main` (every error one line and an exit code; `mnas` and
  `python -m mnas` start here);
- `core` (`arch`, `space`, `zoo`), `latency`, `train` (`train`, `eval`, `export`), `search`
  (`search`, `report`, `best`), `supernet`, `store`: each area's commands, added to the app by
  their `register(app)`.

Command modules import the torch-backed parts of the library inside the commands that use them,
so `mnas --help` and a usage error answer at once.
"""
