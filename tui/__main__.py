"""``lakeloom tui`` / ``python -m tui``: browse the lake and the training runs.

    lakeloom tui [lake.uri=PATH] [runs_dir=PATH] [tui.graphics=auto|halfblock|kitty|sixel]
    lakeloom tui serve [port=8000] [token=SECRET] [same overrides]

The app runs in any terminal (SSH, tmux; no mouse needed: ``?`` lists the keys, ctrl+p
every command). ``serve`` is a sub-command, read before Hydra sees the arguments: it
serves the same app to a browser with textual-serve (``tui.serve``), each tab running
``python -m tui`` with the other overrides; it prints the URL to open, token included
(127.0.0.1 only). The configuration is ``conf/tui.yaml`` and ``conf/tui/<name>.yaml``
(``tui=NAME``). Only Textual, pyarrow and lance load at start; the ML stack is imported,
in a worker, by the first text search.
"""

from __future__ import annotations

import sys
from typing import Any

from lake.job import hydra_job


def run_tui(cfg: Any) -> int:
    """Build the app from the job config and run it until the user quits."""
    from lake.errors import ConfigError
    from tui import graphics
    from tui.config import TuiConfig

    try:
        config = TuiConfig.from_job(cfg)
        mode = graphics.detect(config.graphics)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    graphics.prepare(mode)  # terminal queries: before Textual owns the terminal

    from tui.app import LakeloomApp

    app = LakeloomApp(config, graphics=mode)
    app.run()
    return app.return_code or 0


def run_serve(cfg: Any) -> int:
    """Serve the app on ``host``:``port`` (loopback only, token required) until interrupted."""
    from hydra.core.hydra_config import HydraConfig

    from tui.serve import make_server

    overrides = list(HydraConfig.get().overrides.task)
    token = cfg.get("token")
    server = make_server(
        overrides, host=str(cfg.host), port=int(cfg.port), token=str(token) if token else None
    )
    server.serve()
    return 0


tui_main = hydra_job("tui", light=True)(run_tui)
serve_main = hydra_job("tui")(run_serve)


def main() -> None:
    """``[serve] [overrides]``: run the app, or serve it to a browser."""
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        del sys.argv[1]
        serve_main()
    else:
        tui_main()


if __name__ == "__main__":
    main()
