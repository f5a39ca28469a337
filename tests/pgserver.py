"""A throwaway PostgreSQL server for tests: initdb into a temp dir, listen on 127.0.0.1 only."""
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time


def _bin() -> str:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError("PostgreSQL is not installed: run scripts/install.sh --test")
    return os.path.dirname(found[-1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="volstack-pg-")
        self.bin = _bin()
        self.port = _free_port()
        self.as_root = os.getuid() == 0
        if self.as_root:   # PostgreSQL refuses to run as root
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self.pid = None

    def _run(self, *cmd):
        full = (["runuser", "-u", "postgres", "--"] if self.as_root else []) + list(cmd)
        return subprocess.run(full, capture_output=True, text=True, check=True)

    def start(self) -> "PostgresServer":
        data = os.path.join(self.dir, "data")
        self._run(f"{self.bin}/initdb", "-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C.UTF-8",
                  "--no-instructions", "--no-sync", "-D", data)
        opts = (f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.dir} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._run(f"{self.bin}/pg_ctl", "-D", data, "-l", os.path.join(self.dir, "log"), "-w", "-o", opts, "start")
        with open(os.path.join(data, "postmaster.pid")) as f:
            self.pid = int(f.readline())
        self.createdb("volstack")
        return self

    def createdb(self, name: str) -> str:
        self._run(f"{self.bin}/psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-q",
                  "-c", f'CREATE DATABASE "{name}"')
        return self.url(name)

    def url(self, name="volstack") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        if self.pid:
            try:
                os.kill(self.pid, signal.SIGQUIT)      # immediate shutdown of the postmaster we started
                for _ in range(200):
                    os.kill(self.pid, 0)
                    time.sleep(0.05)
            except ProcessLookupError:
                pass
            self.pid = None
        shutil.rmtree(self.dir, ignore_errors=True)
