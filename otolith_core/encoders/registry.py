"""The encoders by name: ``config.yaml`` entries and ad hoc models -> :class:`EncoderSpec`.

Names: a registry name (``clip-vit-l-14-336``), ``ARCH:TAG`` (an OpenCLIP architecture and weights
tag), ``timm:MODEL[.TAG]``, ``hf-hub:org/name`` (an OpenCLIP or a timm repo, told apart by its
config file), ``local-dir:/path`` (a folder with ``open_clip_config.json`` or timm's ``config.json``),
each optionally followed by a preprocessing variant, ``@pad+clahe`` (see :mod:`.variants`).

A model whose weights come from the Hugging Face Hub (registry entries of those kinds, ``ARCH:TAG``,
``timm:``, ``hf-hub:``) may pin them to one revision, a commit hash (all 40 characters), branch or tag:
``NAME@revision=REV``, before any variant (``hf-hub:org/name@revision=REV@pad+clahe``). The ``revision=``
keeps the pin from ever reading as a variant, whatever the revision is called; a bare ``@main`` is an
error that shows the pin's form. Without a pin the weights are whatever the cache's ``refs/main`` names.

Ad hoc names are resolved by reading the model's own configuration, so the cache key and the applied
preprocessing always come from one place: the spec. Nothing here imports torch for a registry name,
a folder, a cached hub repo or a cached ``timm:`` model.
"""

from __future__ import annotations

import difflib
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from . import open_clip_models, timm_models
from .spec import (ENCODER_ERRORS, REVISION_PIN, EncoderSpec, Precision, Preprocessing, Variant, check_revision,
                   error_message)
from .variants import bad_suffix, parse_variant, split_variant
from .weights import OPEN_CLIP_CONFIG, TIMM_CONFIG, fetch_hub_file, read_json

CONFIG_PATH = Path(__file__).with_name("config.yaml")
NAME_FORMS = ("'ARCH:TAG' (e.g. ViT-B-32:laion2b_s34b_b79k), 'timm:MODEL.TAG', 'hf-hub:org/name' or "
              "'local-dir:/path', optionally with a pinned hub revision '@revision=REV' and then a variant such "
              "as '@pad+clahe'")


def _spec_from_entry(entry: dict[str, Any]) -> EncoderSpec:
    entry = dict(entry)
    pre = entry.pop("preprocessing", None)
    precision = entry.pop("precision", None) or {}
    allowed = {f for f in EncoderSpec.__dataclass_fields__ if f not in ("preprocessing", "precision", "variant", "ad_hoc")}
    unknown = set(entry) - allowed
    if unknown:
        raise ValueError(f"encoder entry {entry.get('name')!r} has unknown field(s) {sorted(unknown)}")
    return EncoderSpec(**entry, preprocessing=Preprocessing(**pre) if pre else None, precision=Precision(**precision))


@lru_cache(maxsize=4)
def load_config(path: str | Path = CONFIG_PATH) -> dict[str, Any]:
    """The parsed ``config.yaml`` (encoders and presets)."""
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def registry(path: str | Path = CONFIG_PATH) -> dict[str, EncoderSpec]:
    """Registered encoders by name, in config order."""
    return {e["name"]: _spec_from_entry(e) for e in load_config(path)["encoders"]}


def presets(path: str | Path = CONFIG_PATH) -> dict[str, dict[str, Any]]:
    """Per-species settings (``age_range``, ...) by name."""
    return dict(load_config(path).get("presets") or {})


def resolve_encoder(
    name: str,
    *,
    weights_dir: str | Path | None = None,
    clahe_clip_limit: float | None = None,
    clahe_kernel: float | None = None,
) -> EncoderSpec:
    """A name (see the module docstring) -> :class:`EncoderSpec`.

    Parameters
    ----------
    name : the encoder, optionally with a pinned revision and a variant suffix
        (``siglip2-so400m-14-378@pad+clahe``, ``hf-hub:org/name@revision=REV@pad``).
    weights_dir : Hugging Face cache folder used for hub configs (default: the HF default).
    clahe_clip_limit, clahe_kernel : CLAHE parameters of a ``clahe`` variant (defaults in
        :mod:`.spec`); ignored without one.

    Raises
    ------
    KeyError : unknown name. ValueError : a bad variant suffix, revision or config. FileNotFoundError : a missing
    folder. EncoderUnavailable : a hub config that cannot be fetched now.
    """
    name = name.strip()
    rest, options = split_variant(name)
    model, revision = split_revision(rest)
    if revision is not None:
        check_revision(revision, encoder=name)
    problem = bad_suffix(model, name=name) if model not in registry() else None
    if problem:
        raise ValueError(problem)
    variant = None if options is None else parse_variant(name, options, clahe_clip_limit=clahe_clip_limit,
                                                          clahe_kernel=clahe_kernel)
    spec = _resolve_plain(model, weights_dir, revision)
    if revision is not None:
        spec = with_revision(spec, revision)
    return spec if variant is None else with_variant(spec, variant)


def split_revision(name: str) -> tuple[str, str | None]:
    """``(model name, pinned revision)`` of a name without its variant suffix; the revision is None when unpinned."""
    base, at, suffix = name.rpartition("@")
    if at and base and suffix.startswith(REVISION_PIN):
        return base, suffix[len(REVISION_PIN):]
    return name, None


def with_revision(spec: EncoderSpec, revision: str) -> EncoderSpec:
    """``spec`` with its hub weights pinned to ``revision``, named ``name@revision=REV``; a ValueError for an
    encoder whose weights come from no hub (built-in, folder, checkpoint)."""
    return replace(spec, name=f"{spec.name}@{REVISION_PIN}{revision}", revision=revision)


def with_variant(spec: EncoderSpec, variant: Variant) -> EncoderSpec:
    """``spec`` prepared as ``variant`` says, named ``base@suffix`` (options in a fixed order)."""
    if not variant:
        return spec
    return replace(spec, name=f"{spec.base_name}@{variant.suffix}", variant=variant)


def resolve_encoders(names, **options) -> tuple[dict[str, EncoderSpec], dict[str, str]]:
    """Resolve several names at once: ``({name: spec}, {name: why it cannot be used})``; never raises for a name."""
    specs, problems = {}, {}
    for name in names:
        try:
            specs[name] = resolve_encoder(name, **options)
        except ENCODER_ERRORS as exc:
            problems[name] = error_message(exc)
    return specs, problems


def _resolve_plain(name: str, weights_dir, revision: str | None = None) -> EncoderSpec:
    """The spec of a name without pin or variant; a hub config is read at ``revision`` (default: main)."""
    known = registry()
    if name in known:
        return known[name]
    if name.startswith("local-dir:"):
        return _local_dir_spec(name)
    if name.startswith("hf-hub:"):
        return _hf_hub_spec(name, weights_dir, revision)
    if name.startswith("timm:"):
        return timm_models.spec_from_name(name, weights_dir=weights_dir, revision=revision)
    if ":" in name:
        return open_clip_models.spec_from_tag(name)
    close = difflib.get_close_matches(name, list(known) + open_clip_models.list_models(), n=5, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise KeyError(f"unknown encoder {name!r}{hint} Choose from {sorted(known)}, or give a model as {NAME_FORMS}")


def _local_dir_spec(name: str) -> EncoderSpec:
    folder = Path(name[len("local-dir:"):]).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"encoder {name!r}: folder {str(folder)!r} does not exist")
    model_id = str(folder.resolve())
    for config_name, family in ((OPEN_CLIP_CONFIG, open_clip_models), (TIMM_CONFIG, timm_models)):
        path = folder / config_name
        if path.is_file():
            config = _read_config(path, name)
            return family.spec_from_config(name, config, loader="local-dir", model_id=model_id, where=repr(str(path)))
    raise FileNotFoundError(
        f"encoder {name!r}: {str(folder)!r} holds neither {OPEN_CLIP_CONFIG} (an OpenCLIP model) nor {TIMM_CONFIG} "
        f"(a timm model, as timm's save_for_hf writes it); a local-dir model needs its config next to its weights"
    )


def _hf_hub_spec(name: str, weights_dir, revision: str | None) -> EncoderSpec:
    repo = name[len("hf-hub:"):]
    pinned = name if revision is None else f"{name}@{REVISION_PIN}{revision}"
    path = fetch_hub_file(repo, [OPEN_CLIP_CONFIG, TIMM_CONFIG], encoder=pinned, weights_dir=weights_dir,
                          revision=revision)
    family = open_clip_models if Path(path).name == OPEN_CLIP_CONFIG else timm_models
    return family.spec_from_config(name, _read_config(path, name), loader="hf-hub", model_id=repo,
                                   where=f"{Path(path).name} of {repo}")


def _read_config(path: str | Path, name: str) -> dict[str, Any]:
    try:
        return read_json(path, encoder=name)
    except Exception as exc:  # an unreadable config is a bad value the user can fix
        raise ValueError(str(exc)) from exc
