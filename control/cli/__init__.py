"""``imctl``: run the processes and operate a running cluster through its admin API.

Modules, one job each: ``parser`` builds the command line; ``entry`` runs it (``main``);
``args`` holds the argument types; ``context`` what every verb needs (exit codes, the
one-line failure, the config, the admin client for ``--server``/``--token``);
``admin_client`` calls the admin HTTP API; ``render`` shows tables and ``--output json``;
then one module per verb group: ``processes`` (up, scheduler, access, controller),
``nodes`` (nodes, access drain/undrain), ``presence``, ``explain``, ``tokens``,
``connect`` (over the reference client in ``client``) and ``config_check``.

The CLI reaches the servers only through ``control.launch`` (to run them) and the admin
API (to operate them); the uid and event-count rules it checks before sending come from
``control.common.wire``, as the servers' do (.importlinter holds it to this).
"""

from control.cli.entry import main
from control.cli.parser import build_parser

__all__ = ["build_parser", "main"]
