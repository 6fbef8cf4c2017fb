"""Label Studio's formats for a text-classification round: the labeling config, tasks with the
model's prediction as pre-annotation, and the annotations read back from an export.

The same JSON goes through the Label Studio SDK or through files (import the tasks file, export
the project as JSON), for teams whose tool runs elsewhere. An export is checked whole before
anything is used: a malformed task or a label outside the label set fails naming the task.
"""

from __future__ import annotations

from typing import Any
from xml.sax.saxutils import quoteattr

import numpy as np
import pandas as pd

from slipway.errors import SlipwayError

FROM, TO = "label", "text"


def labeling_config(classes: list[str]) -> str:
    """A single-choice classification interface over the task's `text`, one choice per class."""
    choices = "\n".join(f"    <Choice value={quoteattr(c)}/>" for c in classes)
    return (f'<View>\n  <Text name="{TO}" value="$text"/>\n'
            f'  <Choices name="{FROM}" toName="{TO}" choice="single" showInLine="true">\n'
            f"{choices}\n  </Choices>\n</View>")


def tasks(items: pd.DataFrame, probs: np.ndarray, classes: list[str], model_version: str
          ) -> list[dict[str, Any]]:
    """One task per row of `items` (`item`, `text`): the text, our item id, and the model's
    most likely class with its probability as a prediction (pre-annotation)."""
    best = probs.argmax(axis=1)
    return [{"data": {"text": text, "item": str(item)},
             "predictions": [{"model_version": model_version, "score": float(probs[i, best[i]]),
                              "result": [choice(classes[best[i]])]}]}
            for i, (item, text) in enumerate(zip(items["item"], items["text"], strict=True))]


def choice(label: str) -> dict[str, Any]:
    """A classification result choosing `label`."""
    return {"from_name": FROM, "to_name": TO, "type": "choices", "value": {"choices": [label]}}


def annotator_name(completed_by: Any) -> str:
    """The annotator as Label Studio names them: a user id, or the user object of an export."""
    if isinstance(completed_by, dict):
        return str(completed_by.get("email") or completed_by.get("id"))
    return str(completed_by)


def read_annotations(exported: list[dict[str, Any]], classes: list[str]) -> pd.DataFrame:
    """The completed annotations of exported tasks as a long table: `item`, `annotator`,
    `label`, `annotated_at`, `task` (cancelled annotations and open tasks are left out). The
    whole export is checked first; a problem raises naming the task and the fix."""
    rows = []
    for position, task in enumerate(exported):
        name = f"task {task.get('id', f'#{position}')}" if isinstance(task, dict) \
            else f"task #{position}"
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            raise SlipwayError(f"{name}: not a task object with `data`; export the project as "
                               "Label Studio JSON")
        item = task["data"].get("item")
        if item is None:
            raise SlipwayError(f"{name}: no data.item; import tasks made by "
                               "slipway.labeling.tasks, which carry the item id")
        for annotation in task.get("annotations") or []:
            if annotation.get("was_cancelled"):
                continue
            picked = [r["value"].get("choices") for r in annotation.get("result") or []
                      if r.get("from_name") == FROM and isinstance(r.get("value"), dict)]
            if len(picked) != 1 or not picked[0] or len(picked[0]) != 1:
                raise SlipwayError(f"{name}: annotation {annotation.get('id')} has no single "
                                   f"choice for {FROM!r}; use the labeling config of "
                                   "slipway.labeling.tasks.labeling_config")
            label = picked[0][0]
            if label not in classes:
                raise SlipwayError(f"{name}: label {label!r} is not in the label set {classes}; "
                                   "fix the project's labeling config or the label set")
            rows.append({"item": str(item),
                         "annotator": annotator_name(annotation.get("completed_by")),
                         "label": label, "annotated_at": annotation.get("created_at"),
                         "task": task.get("id")})
    return pd.DataFrame(rows, columns=["item", "annotator", "label", "annotated_at", "task"])
