"""The library's error for failures a user can act on (bad or missing data, a refused step).

Library code raises `SlipwayError` with a message that says what went wrong and how to fix it;
the job command line (`slipway.cli`) maps it to exit status 1 without a traceback.
"""

from __future__ import annotations


class SlipwayError(RuntimeError):
    """A failure the user can act on; the message names the input and the fix."""
