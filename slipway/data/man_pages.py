"""Real labelled text from this machine: the one-line summaries of its manual pages, labelled by
section (1 user commands, 3 library calls, 5 file formats, 7 overviews, 8 administration).

Nobody here wrote them, and the sections overlap in vocabulary ("list", "file", "format"), so a
model that separates them has learned something; tests and benchmarks judge label quality and
classifiers on them beside generated text.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import pandas as pd

from slipway.errors import SlipwayError

SECTIONS = {"1": "user command", "3": "library call", "5": "file format", "7": "overview",
            "8": "administration"}
_HEADING = re.compile(r'^\.S[Hh]\s+"?NAME"?\s*$')
_ESCAPES = re.compile(r"\\f[BIRP]|\\f\(..|\\\(..|\\[&|^%]|\\s[-+]?\d")


def summary(page: str) -> str | None:
    """The description after the dash of a page's NAME section (man or mdoc macros), or None."""
    lines = page.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(".Nd "):
            text = line[4:]
            break
        if _HEADING.match(line):
            body = []
            for nxt in lines[i + 1:]:
                if nxt.startswith(".S") or nxt.startswith(".Sh"):
                    break
                if not nxt.startswith((".", "'")):
                    body.append(nxt)
            text = " ".join(body).replace("\\-", " - ").partition(" - ")[2]
            break
    else:
        return None
    text = re.sub(r"\s+", " ", _ESCAPES.sub("", text).replace("\\", "")).strip(' "')
    return text if len(text.split()) >= 3 else None


def man_page_summaries(per_section: int, seed: int = 0, root: str = "/usr/share/man",
                       sections: tuple[str, ...] = tuple(SECTIONS)) -> pd.DataFrame:
    """Up to `per_section` distinct summaries of each section, sampled with `seed`: columns
    `text`, `label` (the section's name), `page`."""
    rng = np.random.default_rng(seed)
    frames = []
    for section in sections:
        pages = sorted(Path(root, f"man{section}").glob(f"*.{section}.gz"))
        if not pages:
            raise SlipwayError(f"no section {section} manual pages under {root}; install "
                               "man pages (Debian: apt-get install manpages manpages-dev)")
        rows, seen = [], set()
        for index in rng.permutation(len(pages)):
            with gzip.open(pages[index], "rt", errors="replace") as f:
                text = summary(f.read())
            if text and text.lower() not in seen:
                seen.add(text.lower())
                rows.append({"text": text, "label": SECTIONS[section],
                             "page": pages[index].name})
                if len(rows) == per_section:
                    break
        frames.append(pd.DataFrame(rows))
    return pd.concat(frames, ignore_index=True)
