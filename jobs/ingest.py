"""Ingest landed files: validate every row against its declared schema with Ray Data.

Valid rows go to `<root>/curated/<dataset>/` as Parquet, invalid ones to
`<root>/quarantine/<dataset>/` with the reason per row. Counts reconcile exactly
(read = accepted + quarantined). The job fails when a dataset's quarantined share is above its
`max_quarantine_share`, and then leaves that dataset's last curated version in place.
"""

from __future__ import annotations

import ray
from pydantic import Field

from slipway.cli import JobFailed, run_job
from slipway.config import JobConfig
from slipway.data.ingest import IngestResult, IngestSpec, ingest_dataset
from slipway.runtime import init_ray
from slipway.storage import Storage
from slipway.tracking import track_run


class IngestConfig(JobConfig):
    """The datasets to ingest, by name."""

    datasets: dict[str, IngestSpec] = Field(min_length=1)


def main(cfg: IngestConfig) -> dict[str, IngestResult]:
    """Ingest every configured dataset and print a summary; fail on too many bad rows."""
    storage = Storage(cfg.storage.root)
    init_ray(cfg.ray)
    results: dict[str, IngestResult] = {}
    with track_run("ingest", cfg, storage) as run:
        for name, spec in cfg.datasets.items():
            try:
                result = ingest_dataset(name, spec, storage)
            except (FileNotFoundError, ValueError) as exc:
                raise JobFailed(f"dataset {name!r}: {exc}") from None
            results[name] = result
            run.log({f"{name}/read": result.read, f"{name}/accepted": result.accepted,
                     f"{name}/quarantined": result.quarantined,
                     f"{name}/quarantined_share": result.quarantined_share})
            run.add_data_version(f"curated/{name}", storage.version("curated", name))
            print(f"{name}: read {result.read:,} = accepted {result.accepted:,} + quarantined "
                  f"{result.quarantined:,} -> {result.curated_uri}")
            if result.reasons:
                top = ", ".join(f"{k} ({v})" for k, v in list(result.reasons.items())[:5])
                print(f"  quarantined in {result.quarantine_uri}; most common: {top}")
        over = {n: r for n, r in results.items()
                if r.quarantined_share > cfg.datasets[n].max_quarantine_share}
        if over:
            details = "; ".join(
                f"{n}: {r.quarantined_share:.1%} quarantined ({r.quarantined:,} of {r.read:,}) "
                f"> max_quarantine_share {cfg.datasets[n].max_quarantine_share:.1%}"
                for n, r in over.items())
            raise JobFailed(f"{details}. The last curated version was kept. Read the reasons in "
                            f"{storage.uri('quarantine')}, fix the source, or raise "
                            f"datasets.<name>.max_quarantine_share.")
    return results


if __name__ == "__main__":
    run_job(IngestConfig, main, __doc__)
    ray.shutdown()
