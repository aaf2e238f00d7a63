"""A factory for a benchmark: `factory up` on a fresh data directory, listening on localhost,
stopped when the benchmark exits; and its CLI, run as a given key."""

import atexit
import json
import os
import pathlib
import subprocess
import tempfile
import time
import urllib.request


class Factory:
    def __init__(self, binary, port, settings=None):
        self.binary, self.port, self.settings = binary, port, settings or {}
        self.data = pathlib.Path(tempfile.mkdtemp())
        # FACTORY_* variables of the shell would configure the factory under test; only
        # `settings` does.
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FACTORY_")}
        self.url = f"http://127.0.0.1:{port}"
        self.start("all")
        atexit.register(lambda: self.server.terminate())
        self.admin = (self.data / "admin.key").read_text().strip()

    def start(self, role):
        """Starts `factory up` with `role` on this factory's data and waits until it answers."""
        self.server = subprocess.Popen(
            [self.binary, "up", "--data-dir", str(self.data), "--listen", f"127.0.0.1:{self.port}",
             "--jurisdiction", "eu", "--role", role],
            env={**self.env, **self.settings}, stdout=subprocess.DEVNULL, stderr=open(self.data / "log", "a"),
        )
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{self.url}/healthz")
                return
            except OSError:
                time.sleep(1)

    def restart(self, role):
        """Stops the process (SIGTERM, drained) and starts it again with `role`."""
        self.server.terminate()
        self.server.wait()
        self.start(role)

    def cli(self, *argv, key):
        """Runs `factory ARGV...` against this factory as `key`; returns its output."""
        done = subprocess.run([self.binary, *argv], env={**self.env, "FACTORY_URL": self.url, "FACTORY_API_KEY": key},
                              capture_output=True, text=True, check=True)
        return done.stdout

    def tenant_with_plays(self, corpus, roles):
        """Tenant `bench` with one key per role in `roles` (secrets by role), and dataset `plays`
        (internal): `corpus` ingested as text, one record per paragraph, by the engineer."""
        self.cli("tenant", "create", "bench", "--jurisdiction", "eu", key=self.admin)
        keys = {role: json.loads(self.cli("key", "create", "--tenant", "bench", "--role", role, key=self.admin))["secret"]
                for role in {"engineer", *roles}}
        self.cli("dataset", "create", "plays", "--classification", "internal", key=keys["engineer"])
        self.cli("dataset", "ingest", "plays", corpus, "--format", "text", "--paragraphs", key=keys["engineer"])
        return keys
