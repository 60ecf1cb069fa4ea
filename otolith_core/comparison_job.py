"""A comparison as a background job: the dashboard's run, cross-validated in a process of its own.

The dashboard never fits a head: a Run press writes a :class:`~otolith_core.jobs.ComparisonRequest` (its
settings and the result key it computed) and starts ``otolith compare-job``, which lands here. The job
reads the data and the cached embeddings the way the dashboard did, refuses to go on when they differ
from what the key names (a file changed, an extraction wrote since), cross-validates with a progress
record per fold, and stores the :class:`~otolith_core.comparison.Comparison` in the cache's result store
under the key, where the dashboard, reloaded or restarted, finds it.
"""

from __future__ import annotations

from pathlib import Path

from .jobs import ComparisonRequest, JobRecorder


def run_comparison_job(request: ComparisonRequest, cache_dir: str | Path, job: JobRecorder):
    """Compute the comparison ``request`` asks for, store it under ``request.key`` and return it; raises
    ValueError (the job then fails with that message) when its inputs changed or cannot be compared."""
    from .cache import ResultStore
    from .comparison import compare
    from .covariates import CovariateRequest
    from .data import ManifestColumns, data_signature, load_dataset
    from .embeddings import extract_embeddings
    from .encoders import resolve_encoder
    from .heads import HeadSpec

    columns = ManifestColumns(**request.columns) if request.columns else ManifestColumns()
    if data_signature(request.data, columns) != request.data_signature:
        raise ValueError(f"{request.data} changed since Run was pressed (files added, removed or edited): press Run "
                         f"again to compare what is there now")
    data = load_dataset(request.data, age_range=request.age_range, columns=columns, cache_dir=cache_dir)
    if request.excluded:  # the images flagged unusable when Run was pressed, as the dashboard left them out
        from .exchange import leave_out

        data, _ = leave_out(data, request.excluded)
    specs = {name: resolve_encoder(name) for name in request.encoders}
    embeddings = {}
    for name, spec in specs.items():
        embedding = extract_embeddings(data, spec, cache_dir=cache_dir, cached_only=True)
        if embedding.digest != request.digests.get(name):
            raise ValueError(f"the cached embeddings of {name} changed since Run was pressed (an extraction wrote to "
                             f"the cache): press Run again")
        embeddings[name] = embedding
    heads = [HeadSpec(**head) for head in request.heads]
    result = compare(data, embeddings, heads, n_folds=request.n_folds, seed=request.seed, repeats=request.repeats,
                     group_by_fish=request.group_by_fish, group_column=request.group_column,
                     holdout_column=request.holdout_column, with_learning_curve=request.learning_curve,
                     failed_encoders=request.failed_encoders,
                     scalings={name: spec.scaling for name, spec in specs.items()}, combined=request.combined,
                     covariates=CovariateRequest(request.covariates, request.impute_covariates),
                     progress=job.cross_validating)
    result.summary_frame()  # the bootstrap intervals and fish-level predictions, computed once here and stored with
    result.fish_predictions_frame()  # it, so the dashboard's first view of it computes nothing
    store = ResultStore(cache_dir)
    try:
        store.put(request.key, result)
    finally:
        store.close()
    job.finished_with(models=len(result.results), folds=len(result.results) * result.n_folds * result.repeats)
    return result
