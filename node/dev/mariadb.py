"""A MariaDB server of one's own (its datadir and port) for fault tests and the chaos benchmark:
killed, stopped and started at will while the system one is never touched."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from node.dev.launcher import free_port, wait_until


def mariadb_available() -> bool:
    """Whether this machine can run a private server (MariaDB's server package is installed)."""
    return shutil.which("mariadb-install-db") is not None


class PrivateMariaDB:
    """A fresh datadir in ``folder``, served on a free loopback port; started on creation."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port = folder, free_port()
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mariadb-install-db", "--no-defaults", f"--datadir={folder / 'data'}", "--user=root",
                        "--auth-root-authentication-method=normal", "--skip-test-db"],
                       check=True, capture_output=True, timeout=120)
        self.process: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        """A SQLAlchemy URL of the server; append ``/DATABASE`` (created on a node's first start)."""
        return f"mysql+pymysql://root@127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> None:
        self.process = subprocess.Popen(
            [shutil.which("mariadbd") or "/usr/sbin/mariadbd", "--no-defaults", f"--datadir={self.folder / 'data'}",
             f"--port={self.port}", f"--socket={self.folder / 'sock'}", "--user=root", "--bind-address=127.0.0.1"],
            stdout=subprocess.DEVNULL, stderr=(self.folder / "server.log").open("a"))
        wait_until(self.answers, timeout, "the private MariaDB server")

    def kill(self) -> None:
        """SIGKILL: the server dies as in a crash (InnoDB recovers on the next start)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def answers(self) -> bool:
        import pymysql

        try:
            pymysql.connect(host="127.0.0.1", port=self.port, user="root", connect_timeout=1).close()
            return True
        except pymysql.MySQLError:
            return False
