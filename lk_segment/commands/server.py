"""`make ui` / `make server`: what the MLflow server is started with, and what it refuses to start without.

Anyone who can reach a tracking server can delete runs, move a registered model's alias, and
overwrite a logged model's code, which ``mlflow.pyfunc.load_model`` and ``mlflow models serve``
then run on whoever loads it. So:

- beyond loopback the server listens only with MLflow's basic-auth app (``auth=True``: ``make
  server AUTH=1``), unless the user says the network is trusted (``insecure=True``: ``INSECURE=1``);
- it answers only the Host headers it is named by (``--allowed-hosts``: this machine's names and
  addresses, or the user's list; never ``*``, MLflow's switch that turns its DNS-rebinding guard off);
- with authentication the admin user is created on the first start with the password in
  ``MLFLOW_AUTH_ADMIN_PASSWORD``; users live in ``mlruns/basic_auth.db``; the secret key that signs
  the UI's CSRF tokens is ``MLFLOW_FLASK_SERVER_SECRET_KEY`` or one kept in ``mlruns/`` (owner-only).
"""

from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path

from lk_segment.errors import UserError

LOOPBACK = ("127.0.0.1", "localhost", "::1")
AUTH_DB = Path("mlruns/basic_auth.db")
AUTH_CONFIG = Path("mlruns/basic_auth.ini")
SECRET_KEY_FILE = Path("mlruns/.flask_secret_key")


def check_exposure(host: str, auth: bool, insecure: bool) -> None:
    """Listening beyond loopback needs authentication, or the user's word that the network is trusted."""
    if host not in LOOPBACK and not auth and not insecure:
        raise UserError(f"refusing to listen on {host} without authentication: anyone who reaches it could delete "
                        "runs, move aliases and replace a model's code; add AUTH=1 (users and passwords), or "
                        "INSECURE=1 on a network you trust")


def allowed_hosts(host: str, port: int, given: str | None = None, insecure: bool = False) -> str:
    """The Host headers the server answers, comma-separated: ``given``, else this machine's names and
    addresses, each bare and with ``:port``."""
    if given:
        if "*" in [h.strip() for h in given.split(",")] and not insecure:
            raise UserError("ALLOWED_HOSTS='*' turns MLflow's DNS-rebinding guard off: name the hosts clients use "
                            "(e.g. ALLOWED_HOSTS=mlflow.example.org,10.0.0.5:5000), or add INSECURE=1")
        return given
    names = {"localhost", "127.0.0.1", socket.gethostname(), socket.getfqdn()}
    if host not in ("0.0.0.0", "::"):
        names.add(host)
    try:
        names |= {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None)}
    except OSError:
        pass
    names = {f"[{n}]" if ":" in n else n for n in names if n}
    return ",".join(sorted(f"{n}{suffix}" for n in names for suffix in ("", f":{port}")))


def auth_environment() -> dict[str, str]:
    """The environment of ``mlflow server --app-name basic-auth``: its config file, its secret key."""
    AUTH_CONFIG.parent.mkdir(parents=True, exist_ok=True)
    if not AUTH_DB.exists() and len(os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD", "")) < 12:
        raise UserError("AUTH=1 starts here for the first time: set MLFLOW_AUTH_ADMIN_PASSWORD to the password (12 "
                        "characters or more) of its admin user, created now (the variable is not needed afterwards)")
    AUTH_CONFIG.write_text(
        "[mlflow]\n"
        "# READ: a signed-in user reads every experiment, and manages those it creates; the admin grants more\n"
        "default_permission = READ\n"
        f"database_uri = sqlite:///{AUTH_DB.resolve()}\n"
        "admin_username = admin\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    key = os.environ.get("MLFLOW_FLASK_SERVER_SECRET_KEY")
    if not key:
        if not SECRET_KEY_FILE.exists():
            fd = os.open(SECRET_KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
        key = SECRET_KEY_FILE.read_text().strip()
    return {"MLFLOW_AUTH_CONFIG_PATH": str(AUTH_CONFIG.resolve()), "MLFLOW_FLASK_SERVER_SECRET_KEY": key}
