"""The Label Studio SDK calls Slipway makes, run inside Label Studio's own virtualenv.

label-studio-sdk pins numpy and OpenCV below what this project's stack needs, so it is installed
beside the server (`make label-studio`: `.label-studio/`), and `slipway.labeling.studio` runs this
file with that environment's Python: one JSON request on stdin, one JSON answer on stdout. It
imports only the standard library and the SDK. The server is `LABEL_STUDIO_URL`, the token
`LABEL_STUDIO_API_KEY`.

Requests (`op` and its fields):
    push      title, label_config, tasks     create a project and import the tasks (with their
                                             predictions); answers project, tasks
    annotate  project, annotations           [{item, annotator, label, from_name, to_name}]:
                                             each annotator is a Label Studio user (created on
                                             first use) completing the task of `item`
    export    project                        the project's annotated tasks, Label Studio JSON,
                                             with `completed_by` as {id, email} and the tasks'
                                             predictions in full
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from label_studio_sdk import LabelStudio

ANNOTATOR_DOMAIN = "annotators.slipway"


def push(ls: LabelStudio, title: str, label_config: str, tasks: list[dict]) -> dict[str, Any]:
    project = ls.projects.create(title=title, label_config=label_config)
    imported = ls.projects.import_tasks(project.id, request=tasks)
    return {"project": project.id, "tasks": imported.task_count}


def users_by_email(ls: LabelStudio) -> dict[str, int]:
    return {u.email: u.id for u in ls.users.list()}


def annotate(ls: LabelStudio, project: int, annotations: list[dict]) -> dict[str, Any]:
    task_of = {t.data["item"]: t.id for t in ls.tasks.list(project=project, fields="all")}
    missing = sorted({a["item"] for a in annotations} - set(task_of))
    if missing:
        raise SystemExit(f"items {missing[:3]} are not tasks of project {project}")
    users = users_by_email(ls)
    for a in annotations:
        email = a["annotator"] if "@" in a["annotator"] else f"{a['annotator']}@{ANNOTATOR_DOMAIN}"
        if email not in users:
            users[email] = ls.users.create(username=email.split("@")[0], email=email).id
        ls.annotations.create(id=task_of[a["item"]], completed_by=users[email], result=[
            {"from_name": a["from_name"], "to_name": a["to_name"], "type": "choices",
             "value": {"choices": [a["label"]]}}])
    return {"annotations": len(annotations)}


def export(ls: LabelStudio, project: int) -> list[dict]:
    exported = json.loads(b"".join(ls.projects.exports.download_sync(project,
                                                                     export_type="JSON")))
    email = {i: e for e, i in users_by_email(ls).items()}
    predictions = {p.id: p.model_dump(mode="json") for p in ls.predictions.list(project=project)}
    for task in exported:  # the export names predictions by id: put them in whole
        task["predictions"] = [predictions.get(p, p) if isinstance(p, int) else p
                               for p in task.get("predictions") or []]
        for annotation in task.get("annotations") or []:
            who = annotation.get("completed_by")
            if isinstance(who, int):
                annotation["completed_by"] = {"id": who, "email": email.get(who)}
    return exported


def main() -> None:
    request = json.load(sys.stdin)
    ls = LabelStudio(base_url=os.environ["LABEL_STUDIO_URL"],
                     api_key=os.environ["LABEL_STUDIO_API_KEY"])
    op = request.pop("op")
    answer = {"push": push, "annotate": annotate, "export": export}[op](ls, **request)
    json.dump(answer, sys.stdout)


if __name__ == "__main__":
    main()
