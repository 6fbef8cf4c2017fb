"""Feature pipelines: per-user and per-article features computed from events with Ray Data.

Engagement features are daily snapshots. The row stamped `D+1 00:00 UTC` holds, for one entity,
impressions, clicks, smoothed click-through rate and mean dwell over the 1, 7 and 30 days that end
with day D, and the days since its last event. A feature row never contains an event from after
its timestamp, which is what makes Feast's point-in-time join leak-free.

Every entity has a snapshot at midnight of the day of its first event (zero counts, no recency),
then one per day through the last day. So every event has a snapshot of its entity at most a day
old: no training row finds only future feature rows (Feast's file store drops such rows instead
of returning nulls), and a cold-start entity is represented as it is served, with zero counts.

The path is lean on purpose: each block of events is reduced to (entity, day) partial sums with
Arrow's group-by (no per-row Python), the partials are repartitioned by entity id (Ray Data's
keyed hash shuffle, one for both kinds, so each block holds whole entities), and windows are
cumulative sums over a dense entity x day grid in NumPy, one block at a time.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import ray.data

WINDOWS = (1, 7, 30)
DAY_US = 86_400_000_000
CTR_PRIOR_CLICKS, CTR_PRIOR_IMPRESSIONS = 1.0, 5.0
KINDS = {"user": "user_id", "article": "article_id"}
KIND_CODES = {kind: code for code, kind in enumerate(KINDS)}
EVENT_COLUMNS = ["user_id", "article_id", "event_timestamp", "clicked", "dwell_seconds"]
_PARTIAL_SCHEMA = pa.schema([
    ("kind", pa.int8()), ("entity_id", pa.int64()), ("day", pa.int64()),
    ("impressions", pa.int64()), ("clicks", pa.int64()), ("dwell", pa.float64()),
    ("last_us", pa.int64()),
])


def daily_partials(events: pa.Table) -> pa.Table:
    """Reduce a block of events to per (kind, entity, day) sums."""
    ts_us = pc.cast(pc.cast(events["event_timestamp"], pa.timestamp("us", tz="UTC"), safe=False),
                    pa.int64())
    base = pa.table({
        "day": pc.divide(ts_us, DAY_US),
        "ts": ts_us,
        "clicked": pc.cast(events["clicked"], pa.int64()),
        "dwell": pc.cast(events["dwell_seconds"], pa.float64()),
    })
    out = []
    for kind, key in KINDS.items():
        table = base.append_column("entity_id", events[key])
        agg = table.group_by(["entity_id", "day"]).aggregate(
            [("clicked", "count"), ("clicked", "sum"), ("dwell", "sum"), ("ts", "max")])
        n = agg.num_rows
        out.append(pa.table({
            "kind": pa.array(np.full(n, KIND_CODES[kind], dtype=np.int8)),
            "entity_id": agg["entity_id"],
            "day": agg["day"],
            "impressions": agg["clicked_count"],
            "clicks": agg["clicked_sum"],
            "dwell": agg["dwell_sum"],
            "last_us": agg["ts_max"],
        }, schema=_PARTIAL_SCHEMA))
    return pa.concat_tables(out)


def windowed_features(partials: pa.Table, kind: str, last_day: int) -> pa.Table:
    """Daily snapshots of window features for one kind of entity from its (entity, day) sums.

    Rows are emitted for each entity from midnight of its first event's day (all zero) through
    `last_day + 1`.
    """
    key = KINDS[kind]
    rows = partials.filter(pc.equal(partials["kind"], KIND_CODES[kind]))
    if rows.num_rows == 0:
        return window_schema(kind).empty_table()
    ids, inverse = np.unique(rows["entity_id"].to_numpy(), return_inverse=True)
    day = rows["day"].to_numpy()
    first = int(day.min()) - 1  # the grid starts a day early: the zero snapshot of day one
    width = last_day - first + 1
    size = len(ids) * width
    flat = inverse * width + (day - first)

    def dense(values: np.ndarray) -> np.ndarray:
        return np.bincount(flat, weights=values, minlength=size).reshape(len(ids), width)

    def window_sums(grid: np.ndarray) -> dict[int, np.ndarray]:
        cum = np.cumsum(grid, axis=1)
        out = {}
        for w in WINDOWS:
            total = cum.copy()
            if w < width:
                total[:, w:] -= cum[:, :-w]
            out[w] = total.ravel()
        return out

    daily_impressions = dense(rows["impressions"].to_numpy().astype(np.float64))
    impressions = window_sums(daily_impressions)
    clicks = window_sums(dense(rows["clicks"].to_numpy().astype(np.float64)))
    dwell = window_sums(dense(rows["dwell"].to_numpy()))
    last = np.full(size, -1, dtype=np.int64)
    np.maximum.at(last, flat, rows["last_us"].to_numpy())
    last = np.maximum.accumulate(last.reshape(len(ids), width), axis=1).ravel()

    # Snapshot of day D (stamped D+1) exists once the entity has an event on or before day D+1.
    seen = np.cumsum(daily_impressions, axis=1) > 0
    keep = np.flatnonzero(np.concatenate([seen[:, 1:], seen[:, -1:]], axis=1))
    entity_idx, day_idx = np.divmod(keep, width)
    snapshot_us = (first + day_idx + 1).astype(np.int64) * DAY_US
    columns: dict[str, pa.Array] = {
        key: pa.array(ids[entity_idx], pa.int64()),
        "event_timestamp": pa.array(snapshot_us, pa.timestamp("us", tz="UTC")),
    }
    for w in WINDOWS:
        imp, clk, dw = impressions[w][keep], clicks[w][keep], dwell[w][keep]
        columns[f"{kind}_impressions_{w}d"] = pa.array(np.rint(imp).astype(np.int64))
        columns[f"{kind}_clicks_{w}d"] = pa.array(np.rint(clk).astype(np.int64))
        columns[f"{kind}_ctr_{w}d"] = pa.array(
            (clk + CTR_PRIOR_CLICKS) / (imp + CTR_PRIOR_IMPRESSIONS), pa.float64())
        columns[f"{kind}_dwell_mean_{w}d"] = pa.array(
            np.divide(dw, clk, out=np.zeros_like(dw), where=clk > 0), pa.float64())
    last_kept = last[keep]
    columns[f"{kind}_days_since_last_event"] = pa.array(
        (snapshot_us - last_kept) / DAY_US, pa.float64(), mask=last_kept < 0)
    return pa.table(columns, schema=window_schema(kind))


def window_schema(kind: str) -> pa.Schema:
    """Columns of the daily window features of one kind of entity."""
    fields = [(KINDS[kind], pa.int64()), ("event_timestamp", pa.timestamp("us", tz="UTC"))]
    for w in WINDOWS:
        fields += [(f"{kind}_impressions_{w}d", pa.int64()), (f"{kind}_clicks_{w}d", pa.int64()),
                   (f"{kind}_ctr_{w}d", pa.float64()), (f"{kind}_dwell_mean_{w}d", pa.float64())]
    fields.append((f"{kind}_days_since_last_event", pa.float64()))
    return pa.schema(fields)


def read_events(uri: str) -> ray.data.Dataset:
    """The event columns of a Parquet folder, in two read blocks per CPU of the cluster or one
    per 2M rows where that is more. Ray's floor of 200 read blocks made a 10M-event read 200
    partial-sum tasks on two CPUs, each paying its own overhead and merging fewer rows."""
    rows = pads.dataset(uri, format="parquet").count_rows()
    blocks = max(default_partitions(), -(-rows // 2_000_000))
    return ray.data.read_parquet(uri, override_num_blocks=blocks).select_columns(EVENT_COLUMNS)


def default_partitions() -> int:
    """Blocks of partial sums after the shuffle: twice the cluster's CPUs."""
    return 2 * max(1, int(ray.cluster_resources().get("CPU", 1)))


def engagement_features(events: ray.data.Dataset, partitions: int
                        ) -> dict[str, ray.data.Dataset]:
    """Ray Data pipeline from events to `{"user": ds, "article": ds}` of daily window features.

    Map: each block of events becomes (kind, entity, day) partial sums. Shuffle: the partials
    (about half as many rows as events) are hash-partitioned by entity id into `partitions`
    blocks, users and articles in one shuffle, materialized once for both kinds. Windows: each
    block's entities of one kind get their daily snapshots up to the last event day of all the
    data.
    """
    by_entity = (events.map_batches(daily_partials, batch_format="pyarrow", batch_size=None)
                 .repartition(partitions, keys=["entity_id"]).materialize())
    # One small row per block (Dataset.max would start a hash-shuffle aggregation for it).
    last_day = int(by_entity.map_batches(_max_day, batch_format="pyarrow", batch_size=None)
                   .to_pandas()["day"].max())
    return {
        kind: by_entity.map_batches(windowed_features,
                                    fn_kwargs={"kind": kind, "last_day": last_day},
                                    batch_format="pyarrow", batch_size=None)
        for kind in KINDS
    }


def _max_day(partials: pa.Table) -> pa.Table:
    """The last day of one block of partial sums (none for an empty block)."""
    if partials.num_rows == 0:
        return pa.table({"day": pa.array([], pa.int64())})
    return pa.table({"day": [pc.max(partials["day"]).as_py()]})


def article_text_features(articles: pa.Table) -> pa.Table:
    """Static article features: topic and text statistics, stamped with the publication time."""
    title_words = pc.add(pc.count_substring(pc.utf8_trim_whitespace(articles["title"]), " "), 1)
    body_words = pc.add(pc.count_substring(pc.utf8_trim_whitespace(articles["body"]), " "), 1)
    return pa.table({
        "article_id": articles["article_id"],
        "event_timestamp": pc.cast(articles["published_at"], pa.timestamp("us", tz="UTC"),
                                   safe=False),
        "article_topic": articles["topic"],
        "article_title_words": pc.cast(title_words, pa.int64()),
        "article_body_words": pc.cast(body_words, pa.int64()),
        "article_body_chars": pc.cast(pc.utf8_length(articles["body"]), pa.int64()),
    })


def user_profile_features(users: pa.Table) -> pa.Table:
    """Static user features, stamped with the signup date."""
    return pa.table({
        "user_id": users["user_id"],
        "event_timestamp": pc.cast(pc.cast(users["signup_date"], pa.timestamp("s")),
                                   pa.timestamp("us", tz="UTC")),
        "user_country": users["country"],
        "user_device": users["device"],
    })
