"""Where local services keep their files.

State (pid files, broker data, logs) goes under a per-user state directory:
``$DSPEX_STATE_DIR`` if set, else ``$XDG_STATE_HOME/dspex``, else
``~/.local/state/dspex``. The broker's Maven project and configuration live in
the source tree's ``infra/kafka``; ``$DSPEX_INFRA_DIR`` points elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

from dspex.errors import ConfigurationError


def default_state_dir() -> Path:
    """The per-user directory for broker data, pid files and logs."""
    explicit = os.environ.get("DSPEX_STATE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "state"
    return base / "dspex"


def infra_dir() -> Path:
    """The ``infra/`` folder holding the Kafka pom and configuration files.

    Raises:
        ConfigurationError: Neither ``$DSPEX_INFRA_DIR`` nor a source checkout
            around the installed package has it.
    """
    explicit = os.environ.get("DSPEX_INFRA_DIR")
    if explicit:
        path = Path(explicit).expanduser()
        if not (path / "kafka" / "pom.xml").is_file():
            raise ConfigurationError(f"DSPEX_INFRA_DIR={path} does not contain kafka/pom.xml")
        return path
    # An editable install or a source checkout: dspex/ sits beside infra/.
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "infra"
        if (candidate / "kafka" / "pom.xml").is_file():
            return candidate
    raise ConfigurationError(
        "cannot find infra/kafka/pom.xml next to the dspex package; "
        "run from a source checkout or set DSPEX_INFRA_DIR"
    )
