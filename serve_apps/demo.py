"""Start the app with `serve run CONFIG` on a local Ray, call each route once, print the
answers, classify every article title (what the labeling round picks from), optionally run a
short simulated A/B experiment on it, and stop it: a step of `make demo`.

    python -m serve_apps.demo --config configs/serve/app.yaml --root data \
        --experiment configs/experiments/ranker_ab.yaml --visits 600 --stream

With `--stream`, a local redis-server carries the app's events: `jobs.stream_features` runs
beside the app (on its Ray) for the whole step, so the experiment's simulated traffic streams
into the stream features, and at the end one posted click is followed into the features the
Ranker reads.

The experiment runs as a user would run it, one job after another: `jobs.experiment` publishes
it (starting now, for an hour), `jobs.simulate_traffic` sends simulated users through the app,
`jobs.analyze_experiment` prints the decision and the report's path; then it is killed.

The app runs exactly as `serve run` runs it; only the storage root (made absolute) and a fresh
demo API key (in SLIPWAY_API_KEYS) are set for this run.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone

import httpx
import pandas as pd
import yaml

from serve_apps.client import tour, wait_ready
from slipway.local import start_redis
from slipway.predictions import read_log
from slipway.storage import Storage


def main() -> None:
    """Run the demo; exit 1 if the app does not come up or a route fails."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/serve/app.yaml")
    parser.add_argument("--root", default="data", help="storage root the jobs wrote")
    parser.add_argument("--timeout", type=float, default=420, help="seconds to wait for ready")
    parser.add_argument("--experiment", help="experiment config to run on the app (optional)")
    parser.add_argument("--visits", type=int, default=600,
                        help="simulated visits (the demo key allows 600 requests a minute)")
    parser.add_argument("--stream", action="store_true",
                        help="stream the app's events into the stream features (local Redis)")
    opts = parser.parse_args()
    with open(opts.config) as f:
        config = yaml.safe_load(f)
    root = os.path.abspath(opts.root)
    config["applications"][0]["args"]["storage_root"] = root
    redis = consumers = None
    if opts.stream:
        redis, redis_address = start_redis()
        stream_url = f"redis://{redis_address}"
        config["applications"][0]["args"]["stream"] = {"url": stream_url}
    port = config["http_options"]["port"]
    key = "sk-demo-" + secrets.token_hex(8)
    env = {**os.environ, "SLIPWAY_API_KEYS": f"demo={key}"}
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as tmp:
        yaml.safe_dump(config, tmp)
    serve_cli = os.path.join(os.path.dirname(sys.executable), "serve")
    server = subprocess.Popen([serve_cli, "run", tmp.name], env=env,
                              start_new_session=True)
    try:
        wait_ready(f"http://127.0.0.1:{port}", opts.timeout)
        if opts.stream:  # on the app's Ray, started by `serve run`
            consumers = subprocess.Popen([
                sys.executable, "-m", "jobs.stream_features", "--set", f"storage.root={root}",
                "--set", "ray.address=auto", "--set", f"consumer.stream.url={stream_url}",
                "--set", "report_every_s=20"], start_new_session=True)
        articles = pd.read_parquet(os.path.join(root, "curated", "articles"))
        answers = tour(f"http://127.0.0.1:{port}", key,
                       question=f"What is the article '{articles['title'].iat[0]}' about?",
                       texts=articles["title"].head(3).tolist(), user_id=1,
                       article_ids=articles["article_id"].head(5).tolist())
        for route, answer in answers.items():
            if route == "/v1/embeddings":
                answer = {**answer, "data": [{"index": d["index"], "dims": len(d["embedding"])}
                                             for d in answer["data"]]}
            print(f"\n{route}\n{json.dumps(answer, indent=1)[:1500]}")
        classify_all(f"http://127.0.0.1:{port}", key, articles["title"].tolist())
        print(f"\nall {len(answers)} routes answered. Start the app again with:\n"
              f"  SLIPWAY_API_KEYS=name=yourkey serve run {opts.config}")
        if opts.experiment:
            experiment(opts.experiment, root, f"http://127.0.0.1:{port}", key, opts.visits,
                       config["applications"][0]["args"].get("follow_interval_s", 10.0))
        if opts.stream:
            follow_a_click(f"http://127.0.0.1:{port}", key, root,
                           int(articles["article_id"].iat[0]))
    except Exception as exc:
        print(f"serve demo failed: {exc}", file=sys.stderr)
        sys.exit(1)
    finally:
        if consumers is not None:
            os.killpg(consumers.pid, signal.SIGINT)
            consumers.wait(timeout=120)
        if redis is not None:
            redis.terminate()
        os.killpg(server.pid, signal.SIGINT)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        os.unlink(tmp.name)


def follow_a_click(url: str, key: str, root: str, article: int, timeout_s: float = 120) -> None:
    """Post one click of user 1 and rank for user 1 until the Ranker's logged features count it;
    print the stream features before and after."""
    storage = Storage(root)
    columns = ["user_clicks_15m", "user_impressions_1h", "user_seconds_since_last_click"]

    def seen(client: httpx.Client) -> dict:
        reply = client.post("/v1/rank", json={"user_id": 1, "article_ids": [article]})
        reply.raise_for_status()
        request_id = reply.headers["x-request-id"]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:  # the prediction log is written every few seconds
            log = read_log(storage, "/v1/rank").to_pandas()
            rows = log[log["request_id"] == request_id]
            if len(rows):
                return {c: rows["inputs"].iat[0][0][c] for c in columns}
            time.sleep(0.5)
        raise RuntimeError(f"/v1/rank answer {request_id} not in the prediction log")

    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"},
                      timeout=60) as client:
        before = seen(client)
        client.post("/v1/events", json={"events": [
            {"type": "click", "user_id": 1, "article_id": article}]}).raise_for_status()
        posted = time.monotonic()
        print(f"\n== stream: user 1 clicked article {article}; the Ranker saw {before} ==")
        while time.monotonic() - posted < timeout_s:
            after = seen(client)
            if (after["user_clicks_15m"] or 0) > (before["user_clicks_15m"] or 0):
                print(f"{time.monotonic() - posted:.1f} s later the Ranker sees {after}")
                return
        raise RuntimeError(f"the click did not reach the Ranker's features in {timeout_s} s")


def classify_all(url: str, key: str, texts: list[str], batch: int = 50) -> None:
    """Classify every text through the app: the served answers a labeling round picks from."""
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"},
                      timeout=120) as client:
        for start in range(0, len(texts), batch):
            client.post("/v1/classify", json={"texts": texts[start:start + batch]}
                        ).raise_for_status()
    print(f"\n/v1/classify answered all {len(texts)} article titles (the labeling round's pool)")


def experiment(path: str, root: str, url: str, key: str, visits: int, follow_s: float) -> None:
    """Publish the experiment from now for an hour, simulate traffic, analyse, kill it."""
    now = datetime.now(timezone.utc)
    common = ["--config", path, "--set", f"storage.root={root}"]
    window = ["--set", f"experiment.start={now.isoformat()}",
              "--set", f"experiment.end={(now + timedelta(hours=1)).isoformat()}"]

    def job(name: str, *args: str, env: dict | None = None) -> None:
        print(f"\n== {name} ==", flush=True)
        subprocess.run([sys.executable, "-m", name, *args], check=True, env=env)

    job("jobs.experiment", *common, *window)
    time.sleep(follow_s + 2)  # every replica has read it
    job("jobs.simulate_traffic", "--set", f"storage.root={root}", "--set", f"url={url}",
        "--set", f"visits={visits}", env={**os.environ, "SLIPWAY_API_KEY": key})
    time.sleep(10)  # the prediction and event logs flush (every 2 s by default)
    job("jobs.analyze_experiment", *common, *window)
    job("jobs.experiment", *common, *window, "--set", "experiment.killed=true")


if __name__ == "__main__":
    main()
