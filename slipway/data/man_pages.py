"""Real text from this machine: the one-line summaries of its manual pages, labelled by section
(1 user commands, 3 library calls, 5 file formats, 7 overviews, 8 administration), and the pages'
bodies as documents a summary should retrieve.

Nobody here wrote them, and the sections overlap in vocabulary ("list", "file", "format"), so a
model that separates them has learned something; tests and benchmarks judge label quality,
classifiers and retrieval on them beside generated text.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from slipway.errors import SlipwayError

SECTIONS = {"1": "user command", "3": "library call", "5": "file format", "7": "overview",
            "8": "administration"}
_HEADING = re.compile(r'^\.S[Hh]\s+"?NAME"?\s*$')
_ESCAPES = re.compile(r"\\f[BIRP]|\\f\(..|\\\(..|\\[&|^%,/]|\\s[-+]?\d")
_DESCRIPTION = re.compile(r'^\.S[Hh]\s+"?DESCRIPTION"?\s*$')
_LAYOUT = {"TH", "SH", "Sh", "SS", "Ss", "PP", "LP", "P", "TP", "br", "sp", "in", "ti", "ft",
           "nf", "fi", "RS", "RE", "na", "ad", "de", "ds", "nr", "if", "ie", "el", "so", "Dd",
           "Dt", "Os", "Bl", "El", "Bd", "Ed", "TS", "TE", "EX", "EE", "UR", "UE", "ne", "hy"}


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


def section_pages(root: str, section: str, exclude: tuple[str, ...] = ()) -> list[Path]:
    """The gzipped pages of a section, sorted, less those whose names start with `exclude`."""
    pages = sorted(p for p in Path(root, f"man{section}").glob(f"*.{section}.gz")
                   if not p.name.startswith(exclude))
    if not pages:
        raise SlipwayError(f"no section {section} manual pages under {root}; install man pages "
                           "(Debian: apt-get install manpages manpages-dev)")
    return pages


def shuffled(pages: list[Path], rng: np.random.Generator) -> Iterator[tuple[Path, str]]:
    """The pages in an order drawn from `rng`, each with its source, read as it is reached."""
    for index in rng.permutation(len(pages)):
        with gzip.open(pages[index], "rt", errors="replace") as f:
            text = f.read()
        yield pages[index], text


def body_text(page: str, max_words: int) -> str:
    """Plain text of a page from its DESCRIPTION on (or after its NAME section): troff escapes
    and layout requests dropped, the words of font macros (`.B ls`) kept; the first
    `max_words` words."""
    lines = page.splitlines()
    start = next((i for i, line in enumerate(lines) if _DESCRIPTION.match(line)), None)
    if start is None:
        start = next((i + 2 for i, line in enumerate(lines) if _HEADING.match(line)), 0)
    words: list[str] = []
    for line in lines[start + 1:]:
        if line.startswith((".", "'")):
            request, _, rest = line[1:].partition(" ")
            if request.startswith('\\"') or request in _LAYOUT:
                continue
            line = rest.replace('"', " ")
        text = _ESCAPES.sub("", line).replace("\\-", "-").replace("\\", "")
        words += text.split()
        if len(words) >= max_words:
            break
    return " ".join(words[:max_words])


def man_page_documents(count: int, seed: int = 0, root: str = "/usr/share/man",
                       section: str = "1", max_words: int = 300,
                       exclude: tuple[str, ...] = ("gcloud",)) -> pd.DataFrame:
    """Up to `count` section-`section` pages sampled with `seed` that have a summary and at
    least 40 words of body: columns `page` (e.g. `ls.1`), `title` (the command), `summary`
    (the NAME line's description: a question whose answer is the page) and `body`. Pages
    whose names start with `exclude` are left out (gcloud's 16,000 generated pages repeat one
    text per release track)."""
    rows, seen = [], set()
    pages = section_pages(root, section, exclude)
    for path, page in shuffled(pages, np.random.default_rng(seed)):
        text, body = summary(page), body_text(page, max_words)
        if text and text.lower() not in seen and len(body.split()) >= 40:
            seen.add(text.lower())
            name = path.name.removesuffix(".gz")
            rows.append({"page": name, "title": name.rsplit(".", 1)[0], "summary": text,
                         "body": body})
            if len(rows) == count:
                break
    return pd.DataFrame(rows)


def man_page_summaries(per_section: int, seed: int = 0, root: str = "/usr/share/man",
                       sections: tuple[str, ...] = tuple(SECTIONS)) -> pd.DataFrame:
    """Up to `per_section` distinct summaries of each section, sampled with `seed`: columns
    `text`, `label` (the section's name), `page`."""
    rng = np.random.default_rng(seed)
    frames = []
    for section in sections:
        rows, seen = [], set()
        for path, page in shuffled(section_pages(root, section), rng):
            text = summary(page)
            if text and text.lower() not in seen:
                seen.add(text.lower())
                rows.append({"text": text, "label": SECTIONS[section], "page": path.name})
                if len(rows) == per_section:
                    break
        frames.append(pd.DataFrame(rows))
    return pd.concat(frames, ignore_index=True)
