"""A Label Studio server, reached through its SDK: push a round's tasks with the model's
predictions, add annotations, export the annotated tasks; and start a local server.

The SDK runs in Label Studio's own virtualenv (`studio_sdk.py` says why); `LabelStudio` calls it
there with one JSON request per operation. Where no server is reachable, the same JSON travels as
files (a round's `tasks.json`, the project's JSON export): see slipway/labeling/tasks.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import time
import urllib.request
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from slipway.errors import SlipwayError
from slipway.labeling.tasks import FROM, TO

SDK_SCRIPT = os.path.join(os.path.dirname(__file__), "studio_sdk.py")
DATABASE = "label_studio.sqlite3"
# A started data dir's state: the database (migrated, with the admin), the admin's API token and
# the Django secret key.
TEMPLATE_FILES = (DATABASE, ".api_token", ".env")


class StudioSettings(BaseModel):
    """Where the Label Studio server is and how to reach it."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(default="http://127.0.0.1:8090", description="the server's base URL")
    api_key_env: str = Field(default="LABEL_STUDIO_API_KEY",
                             description="environment variable holding the API token")
    python: str = Field(default_factory=lambda: os.environ.get(
        "LABEL_STUDIO_PYTHON", ".label-studio/bin/python"),
        description="a Python with label-studio-sdk (`make label-studio` installs one)")
    timeout_s: float = Field(default=300, gt=0)


class LabelStudio:
    """The operations Slipway needs from a Label Studio server."""

    def __init__(self, settings: StudioSettings) -> None:
        self.settings = settings

    def _call(self, op: str, **request: Any) -> Any:
        key = os.environ.get(self.settings.api_key_env)
        if not key:
            raise SlipwayError(f"label_studio: no API token in ${self.settings.api_key_env}; "
                               "export the token of a Label Studio user there")
        if not os.access(self.settings.python, os.X_OK):
            raise SlipwayError(f"label_studio.python: {self.settings.python} is not an "
                               "executable Python; run `make label-studio` or point it at a "
                               "Python with label-studio-sdk")
        env = {**os.environ, "LABEL_STUDIO_URL": self.settings.url, "LABEL_STUDIO_API_KEY": key}
        done = subprocess.run([self.settings.python, SDK_SCRIPT], input=json.dumps(
            {"op": op, **request}), capture_output=True, text=True, env=env,
            timeout=self.settings.timeout_s)
        if done.returncode:
            raise SlipwayError(f"Label Studio at {self.settings.url}: {op} failed: "
                               f"{done.stderr.strip()[-800:]}")
        return json.loads(done.stdout)

    def push(self, title: str, label_config: str, tasks: list[dict[str, Any]]) -> int:
        """Create a project named `title` with `label_config`, import `tasks` (predictions
        included); return the project's id."""
        answer = self._call("push", title=title, label_config=label_config, tasks=tasks)
        if answer["tasks"] != len(tasks):
            raise SlipwayError(f"Label Studio imported {answer['tasks']} of {len(tasks)} tasks "
                               f"into project {answer['project']}")
        return answer["project"]

    def annotate(self, project: int, annotations: pd.DataFrame) -> int:
        """Complete the project's tasks with `annotations` (`item`, `annotator`, `label`), each
        annotator as a Label Studio user; return how many were added."""
        rows = annotations[["item", "annotator", "label"]].assign(from_name=FROM, to_name=TO)
        return self._call("annotate", project=project,
                          annotations=rows.to_dict("records"))["annotations"]

    def export(self, project: int) -> list[dict[str, Any]]:
        """The project's annotated tasks as a Label Studio JSON export."""
        return self._call("export", project=project)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


class LocalServer:
    """A Label Studio server on 127.0.0.1:`port` with its SQLite database under `data_dir`.

    `start()` launches it and returns at once; `ready()` waits until it answers and returns
    settings that reach it; `stop()` ends it. As a context manager it is started and ready inside
    the block. Its admin (`admin@slipway.local`) has the API token kept in `data_dir/.api_token`
    (made on first start; legacy token auth on), which `start()` puts in the settings'
    environment variable. The first start migrates the database (about a minute); with a
    `template` (a data dir made by `prepare_template`, as `make label-studio` does) an empty
    `data_dir` starts from a copy of its migrated database, admin and secrets instead."""

    def __init__(self, data_dir: str, port: int, executable: str | None = None,
                 template: str | None = None) -> None:
        self.data_dir = os.path.abspath(data_dir)  # Label Studio resolves it from its own cwd
        self.log = os.path.join(self.data_dir, "server.log")
        self.template = template
        self.settings = StudioSettings(url=f"http://127.0.0.1:{port}")
        self.executable = executable or os.path.join(
            os.path.dirname(self.settings.python), "label-studio")
        self.server: subprocess.Popen | None = None

    def start(self) -> LocalServer:
        """Launch the server (once)."""
        if self.server is not None:
            return self
        os.makedirs(self.data_dir, exist_ok=True)
        if self.template and os.path.exists(os.path.join(self.template, DATABASE)) \
                and not os.path.exists(os.path.join(self.data_dir, DATABASE)):
            for name in TEMPLATE_FILES:
                shutil.copy2(os.path.join(self.template, name), self.data_dir)
        token_file = os.path.join(self.data_dir, ".api_token")
        if not os.path.exists(token_file):
            with open(os.open(token_file, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
                f.write(secrets.token_hex(20))
        with open(token_file) as f:
            token = f.read().strip()
        os.environ[self.settings.api_key_env] = token
        env = {**os.environ, "LABEL_STUDIO_BASE_DATA_DIR": self.data_dir,
               "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
               "LATEST_VERSION_CHECK": "false"}  # no call to pypi.org at start
        port = self.settings.url.rsplit(":", 1)[1]
        with open(self.log, "ab") as log:
            self.server = subprocess.Popen(
                [self.executable, "start", "--no-browser", "--host", "127.0.0.1", "--port", port,
                 "--username", "admin@slipway.local", "--password", token, "--user-token", token],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def ready(self, wait_s: float = 600) -> StudioSettings:
        """Wait until the server answers; its settings."""
        deadline = time.monotonic() + wait_s
        while not _healthy(self.settings.url):
            if self.server is None or self.server.poll() is not None \
                    or time.monotonic() > deadline:
                raise SlipwayError(f"Label Studio did not start on {self.settings.url}; see "
                                   f"{self.log}")
            time.sleep(1)
        return self.settings

    def stop(self) -> None:
        """End the server."""
        if self.server is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.server.pid, 15)
        try:
            self.server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.server.pid, 9)
        self.server = None

    def __enter__(self) -> StudioSettings:
        try:
            return self.start().ready()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


def prepare_template(folder: str) -> str:
    """Start a server once in `folder` on a free port (migrating its database and making the
    admin) and stop it: a template for `LocalServer`; the folder."""
    from slipway.local import free_port

    with LocalServer(folder, free_port()):
        pass
    return folder
