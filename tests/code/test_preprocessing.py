"""Engagement preprocessing: stored as JSON with the model, it must transform exactly as fitted."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from slipway.models.engagement import CATEGORICAL, NUMERIC, Preprocessor


def frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({c: rng.normal(i, 1 + i, n) for i, c in enumerate(NUMERIC)})
    df.iloc[::7, 0] = np.nan
    for c in CATEGORICAL:
        df[c] = rng.choice(["a", "b", "c"], n)
    return df


def test_transform_is_identical_after_a_json_round_trip_with_sorted_keys():
    prep = Preprocessor.fit(frame(200, 0))
    stored = json.loads(json.dumps(prep.to_dict(), sort_keys=True))
    again = Preprocessor(**stored)
    rows = frame(50, 1)
    assert np.array_equal(prep.transform(rows), again.transform(rows))
    x = prep.transform(frame(200, 0))
    # Column j of the numeric block is feature NUMERIC[j], standardised; then missing flags.
    assert np.allclose(x[:, 1:len(NUMERIC)].mean(axis=0), 0, atol=1e-6)
    assert x[::7, len(NUMERIC)].tolist() == [1.0] * len(x[::7])
    assert x.shape[1] == prep.width
    unknown = frame(3, 2).assign(user_device="never-seen")
    block = prep.transform(unknown)[:, -prep.width + 2 * len(NUMERIC):]
    assert block.sum(axis=1).tolist() == [2.0, 2.0, 2.0]  # two known categories, one unknown
