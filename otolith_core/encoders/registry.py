"""The encoders by name: ``config.yaml`` entries and ad hoc models -> :class:`EncoderSpec`.

Names: a registry name (``clip-vit-l-14-336``), ``ARCH:TAG`` (an OpenCLIP architecture and weights
tag), ``timm:MODEL[.TAG]``, ``hf-hub:org/name`` (an OpenCLIP or a timm repo, told apart by its
config file), ``local-dir:/path`` (a folder with ``open_clip_config.json`` or timm's ``config.json``),
each optionally followed by a preprocessing variant, ``@pad+clahe`` (see :mod:`.variants`).

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
from .spec import ENCODER_ERRORS, EncoderSpec, Precision, Preprocessing, Variant, error_message
from .variants import bad_suffix, parse_variant, split_variant
from .weights import OPEN_CLIP_CONFIG, TIMM_CONFIG, fetch_hub_file, read_json

CONFIG_PATH = Path(__file__).with_name("config.yaml")
NAME_FORMS = ("'ARCH:TAG' (e.g. ViT-B-32:laion2b_s34b_b79k), 'timm:MODEL.TAG', 'hf-hub:org/name' or "
              "'local-dir:/path', optionally with a variant such as '@pad+clahe'")


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
    name : the encoder, optionally with a variant suffix (``siglip2-so400m-14-378@pad+clahe``).
    weights_dir : Hugging Face cache folder used for hub configs (default: the HF default).
    clahe_clip_limit, clahe_kernel : CLAHE parameters of a ``clahe`` variant (defaults in
        :mod:`.spec`); ignored without one.

    Raises
    ------
    KeyError : unknown name. ValueError : a bad variant suffix or config. FileNotFoundError : a missing
    folder. EncoderUnavailable : a hub config that cannot be fetched now.
    """
    name = name.strip()
    base, options = split_variant(name)
    if options is None:
        problem = bad_suffix(name) if name not in registry() else None
        if problem:
            raise ValueError(problem)
        return _resolve_plain(name, weights_dir)
    variant = parse_variant(name, options, clahe_clip_limit=clahe_clip_limit, clahe_kernel=clahe_kernel)
    spec = _resolve_plain(base, weights_dir)
    return with_variant(spec, variant)


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


def _resolve_plain(name: str, weights_dir) -> EncoderSpec:
    known = registry()
    if name in known:
        return known[name]
    if name.startswith("local-dir:"):
        return _local_dir_spec(name)
    if name.startswith("hf-hub:"):
        return _hf_hub_spec(name, weights_dir)
    if name.startswith("timm:"):
        return timm_models.spec_from_name(name, weights_dir=weights_dir)
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


def _hf_hub_spec(name: str, weights_dir) -> EncoderSpec:
    repo = name[len("hf-hub:"):]
    path = fetch_hub_file(repo, [OPEN_CLIP_CONFIG, TIMM_CONFIG], encoder=name, weights_dir=weights_dir)
    family = open_clip_models if Path(path).name == OPEN_CLIP_CONFIG else timm_models
    return family.spec_from_config(name, _read_config(path, name), loader="hf-hub", model_id=repo,
                                   where=f"{Path(path).name} of {repo}")


def _read_config(path: str | Path, name: str) -> dict[str, Any]:
    try:
        return read_json(path, encoder=name)
    except Exception as exc:  # an unreadable config is a bad value the user can fix
        raise ValueError(str(exc)) from exc
