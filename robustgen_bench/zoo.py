"""The model zoo: discover entries under ``model_zoo/``, validate ``entry.yaml``, verify and load.

An entry is a folder ``model_zoo/<dataset>/<name>/`` holding ``entry.yaml``, its weights and a
README. Weights are either committed beside the entry (``file:``) or fetched from an upstream
``url:`` into a local cache (``RGBENCH_WEIGHTS``, default ``~/.cache/rgbench/weights``) under the
entry's ``cache_dir``. Every file's sha256 is checked before anything is loaded.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import sys
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any

import yaml

from robustgen_bench.adaptive import AdaptiveSpec, GradientHook
from robustgen_bench.errors import ZooError, did_you_mean

ENTRY_KEYS = {
    "id", "name", "family", "builder", "dataset", "config", "weights", "adaptive",
    "measured", "claimed", "train", "description", "base", "cache_dir",
} | {"link", "authors", "venue", "architecture", "additional_data", "number_forward_passes"}
#: Optional publication metadata (model cards, ``rgbench export --format robustbench``, the site).
META_KEYS = ("link", "authors", "venue", "architecture", "additional_data", "number_forward_passes")
WEIGHT_KEYS = {"file", "sha256", "url", "role"}
ADAPTIVE_KEYS = {"gradient", "randomized", "eot"}


def zoo_root() -> Path:
    """``RGBENCH_ZOO`` or the repository's ``model_zoo/`` beside the package."""
    env = os.environ.get("RGBENCH_ZOO")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "model_zoo"


def weights_cache() -> Path:
    """``RGBENCH_WEIGHTS`` or a per-user cache directory."""
    env = os.environ.get("RGBENCH_WEIGHTS")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rgbench" / "weights"


def cache_dir() -> Path:
    """``RGBENCH_CACHE`` or a per-user cache directory: files derived from verified weights
    (never the weights themselves; the weights cache may be read-only shared material)."""
    env = os.environ.get("RGBENCH_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rgbench" / "derived"


@dataclass(frozen=True)
class WeightsFile:
    """One weights file of an entry; ``role`` distinguishes several files (e.g. one per class)."""

    file: str
    sha256: str
    url: str | None = None
    role: str | None = None


@dataclass(frozen=True)
class ZooEntry:
    """A validated ``entry.yaml``."""

    id: str
    name: str
    dataset: str
    family: str | None
    builder: str | None
    config: Mapping[str, Any]
    weights: tuple[WeightsFile, ...]
    adaptive: AdaptiveSpec
    path: Path
    measured: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    train: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    base: str | None = None
    cache_dir: str | None = None
    meta: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def entry_file(self) -> Path:
        return self.path / "entry.yaml"

    def fingerprint(self) -> str:
        """sha256 of what decides the defense's outputs: builder, config, weights, adaptive hook.

        Two processes (e.g. Ray workers on other machines) that agree on it build the same defense.
        """
        import hashlib
        import json

        canon = {"id": self.id, "family": self.family, "builder": self.builder, "base": self.base,
                 "config": dict(self.config), "weights": [w.sha256 for w in self.weights],
                 "adaptive": self.adaptive.canonical()}
        return hashlib.sha256(json.dumps(canon, sort_keys=True, default=str).encode()).hexdigest()

    def weight_path(self, w: WeightsFile) -> Path:
        """Where ``w`` lives locally: beside the entry, or in the weights cache."""
        if self.family == "robustbench":  # RobustBench's offline layout <dataset>/<threat>/<name>.pt
            from robustgen_bench.defenses.robustbench_zoo import checkpoint_path

            return checkpoint_path(self, w)
        if w.url is None:
            return self.path / w.file
        return weights_cache() / (self.cache_dir or self.id.replace("/", "_")) / w.file


def _inside_folder(name: str) -> bool:
    """Whether the relative path ``name`` stays inside its folder (no ``..``, not absolute)."""
    p = PurePosixPath(name.replace("\\", "/"))
    return not p.is_absolute() and ".." not in p.parts and not re.match(r"^[A-Za-z]:", name)


def _weights_file_ok(name: str, entry_dir: Path, root: Path, cached: bool) -> bool:
    """A weights ``file:`` lies in the entry folder, or (committed files only) in the folder of
    another entry of the same zoo (``../gan-abs/weights.safetensors``); nowhere else."""
    if _inside_folder(name):
        return True
    p = PurePosixPath(name.replace("\\", "/"))
    if cached or p.is_absolute() or re.match(r"^[A-Za-z]:", name):
        return False
    target = Path(os.path.normpath(entry_dir.resolve() / p))
    try:
        target.relative_to(root.resolve())
    except ValueError:
        return False
    return (target.parent / "entry.yaml").is_file()


def _err(entry_file: Path, key: str | None, msg: str) -> ZooError:
    return ZooError(msg, file=entry_file, key=key)


def parse_entry(entry_file: Path, root: Path | None = None) -> ZooEntry:
    """Validate one ``entry.yaml``; raises :class:`ZooError` naming the file and key."""
    try:
        raw = yaml.safe_load(entry_file.read_text())
    except FileNotFoundError:
        raise _err(entry_file, None, "file not found") from None
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        raise ZooError(f"invalid YAML: {getattr(e, 'problem', e)}", file=entry_file,
                       line=None if line is None else line + 1) from None
    if not isinstance(raw, dict):
        raise _err(entry_file, None, "expected a mapping at the top level")
    unknown = set(raw) - ENTRY_KEYS
    if unknown:
        k = sorted(unknown)[0]
        raise _err(entry_file, k, f"unknown key.{did_you_mean(k, sorted(ENTRY_KEYS))}")
    for k in ("id", "name", "dataset", "adaptive"):
        if k not in raw:
            raise _err(entry_file, k, "missing required key")
    for k in ("id", "name", "dataset"):
        if not isinstance(raw[k], str):
            raise _err(entry_file, k, f"expected a string, got {type(raw[k]).__name__}")
    from robustgen_bench.data import DatasetName

    known_datasets = [d.value for d in DatasetName]
    if raw["dataset"] not in known_datasets:
        raise _err(entry_file, "dataset", f"unknown dataset {raw['dataset']!r}."
                   f"{did_you_mean(raw['dataset'], known_datasets)}")
    root = root or zoo_root()
    try:
        rel = entry_file.parent.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        rel = None
    if rel is not None and rel != raw["id"]:
        raise _err(entry_file, "id", f"expected {rel!r} (the folder path under the zoo root)")
    if ("family" in raw) == ("builder" in raw):
        raise _err(entry_file, "family", "expected exactly one of 'family' or 'builder'")
    builder = raw.get("builder")
    if builder is not None and not (isinstance(builder, str) and re.fullmatch(
            r"[A-Za-z_]\w*:[A-Za-z_]\w*", builder)):
        raise _err(entry_file, "builder", f"expected 'module:function' naming a .py file in the "
                   f"entry folder (e.g. model:build), got {builder!r}")
    cache_dir = raw.get("cache_dir")
    if cache_dir is not None and not (isinstance(cache_dir, str) and cache_dir.strip()
                                      and _inside_folder(cache_dir)):
        raise _err(entry_file, "cache_dir", f"expected a folder name inside the weights cache, "
                   f"got {cache_dir!r}")
    config = raw.get("config", {}) or {}
    if not isinstance(config, dict):
        raise _err(entry_file, "config", "expected a mapping")
    weights_raw = raw.get("weights", [])
    if isinstance(weights_raw, dict):
        weights_raw = [weights_raw]
    if not isinstance(weights_raw, list):
        raise _err(entry_file, "weights", "expected a mapping or a list of mappings")
    weights = []
    for i, w in enumerate(weights_raw):
        key = f"weights[{i}]"
        if not isinstance(w, dict):
            raise _err(entry_file, key, "expected a mapping with file and sha256")
        bad = set(w) - WEIGHT_KEYS
        if bad:
            raise _err(entry_file, f"{key}.{sorted(bad)[0]}", f"unknown key; expected {sorted(WEIGHT_KEYS)}")
        if not isinstance(w.get("file"), str) or not w["file"].strip():
            raise _err(entry_file, f"{key}.file", "expected a file name")
        if not _weights_file_ok(w["file"], entry_file.parent, root or zoo_root(), "url" in w):
            raise _err(entry_file, f"{key}.file", "expected a file in the entry folder (or, for a "
                       "committed file, in another entry's folder: ../<name>/weights.safetensors), "
                       f"got {w['file']!r}")
        sha = w.get("sha256")
        if not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
            raise _err(entry_file, f"{key}.sha256", "expected 64 lowercase hex digits")
        weights.append(WeightsFile(file=w["file"], sha256=sha, url=w.get("url"), role=w.get("role")))
    ad = raw["adaptive"]
    if not isinstance(ad, dict):
        raise _err(entry_file, "adaptive", "expected a mapping with gradient, randomized, eot")
    bad = set(ad) - ADAPTIVE_KEYS
    if bad:
        raise _err(entry_file, f"adaptive.{sorted(bad)[0]}", f"unknown key; expected {sorted(ADAPTIVE_KEYS)}")
    try:
        hook = GradientHook(ad.get("gradient"))
    except ValueError:
        raise _err(entry_file, "adaptive.gradient",
                   f"expected one of {[h.value for h in GradientHook]}") from None
    randomized = ad.get("randomized")
    if not isinstance(randomized, bool):
        raise _err(entry_file, "adaptive.randomized", "expected true or false")
    eot = ad.get("eot", 1)
    if not isinstance(eot, int) or isinstance(eot, bool) or eot < 1:
        raise _err(entry_file, "adaptive.eot", "expected a positive integer")
    for k in ("measured", "train"):
        if k in raw and not isinstance(raw[k], dict):
            raise _err(entry_file, k, "expected a mapping")
    for k in META_KEYS:
        if k == "additional_data":
            if k in raw and not isinstance(raw[k], bool):
                raise _err(entry_file, k, "expected true or false (trained with extra data)")
        elif k == "number_forward_passes":
            if k in raw and (not isinstance(raw[k], int) or isinstance(raw[k], bool) or raw[k] < 1):
                raise _err(entry_file, k, "expected a positive integer")
        elif k in raw and not isinstance(raw[k], str):
            raise _err(entry_file, k, "expected a string")
    return ZooEntry(
        id=raw["id"], name=raw["name"], dataset=raw["dataset"], family=raw.get("family"),
        builder=raw.get("builder"), config=MappingProxyType(dict(config)), weights=tuple(weights),
        adaptive=AdaptiveSpec(gradient=hook, randomized=randomized, eot=eot),
        path=entry_file.parent, measured=MappingProxyType(dict(raw.get("measured") or {})),
        train=MappingProxyType(dict(raw.get("train") or {})), base=raw.get("base"),
        cache_dir=raw.get("cache_dir"),
        meta=MappingProxyType({k: raw[k] for k in (*META_KEYS, "description", "claimed")
                               if k in raw}),
    )


def entry_ids(root: Path | None = None) -> list[str]:
    """Ids of every folder holding an ``entry.yaml`` (not validated)."""
    root = root or zoo_root()
    return sorted(p.parent.relative_to(root).as_posix() for p in root.glob("**/entry.yaml"))


def get_entry(entry_id: str, root: Path | None = None) -> ZooEntry:
    """The validated entry ``entry_id``; ZooError with did-you-mean when unknown."""
    root = root or zoo_root()
    f = root / entry_id / "entry.yaml"
    if not f.is_file():
        raise ZooError(f"unknown zoo entry {entry_id!r}.{did_you_mean(entry_id, entry_ids(root))}")
    return parse_entry(f, root)


def list_entries(root: Path | None = None) -> list[ZooEntry]:
    """Every entry under ``root``, validated (raises on the first broken one)."""
    root = root or zoo_root()
    return [parse_entry(root / i / "entry.yaml", root) for i in entry_ids(root)]


#: Columns of :func:`listing` (``rgbench zoo list --format csv``), in order.
LISTING_COLUMNS = ("id", "name", "dataset", "family", "randomized", "clean_accuracy", "n", "error")


def listing(root: Path | None = None) -> list[dict[str, Any]]:
    """One record per entry folder (:data:`LISTING_COLUMNS`); a broken entry has ``error`` set."""
    root = root or zoo_root()
    out: list[dict[str, Any]] = []
    for entry_id in entry_ids(root):
        try:
            e = parse_entry(root / entry_id / "entry.yaml", root)
        except ZooError as err:  # list the broken entry instead of stopping
            out.append({"id": entry_id, "name": None, "dataset": None, "family": None,
                        "randomized": None, "clean_accuracy": None, "n": None, "error": err.detail})
            continue
        acc = e.measured.get("clean_accuracy")
        out.append({"id": e.id, "name": e.name, "dataset": e.dataset,
                    "family": e.family or f"builder {e.builder}", "randomized": e.adaptive.randomized,
                    "clean_accuracy": acc if isinstance(acc, (int, float)) else None,
                    "n": e.measured.get("n"), "error": None})
    return out


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_weights(entry: ZooEntry) -> dict[str, Path]:
    """Make every weights file available locally and verify its sha256.

    Returns ``{role or file: path}``. Downloads ``url`` files into the cache on first use.
    """
    out: dict[str, Path] = {}
    for w in entry.weights:
        p = entry.weight_path(w)
        if not p.is_file():
            if w.url is None:
                hint = ("; with internet access: python -m robustgen_bench.defenses.robustbench_zoo "
                        "download <name> (see docs/SUBMITTING.md)") if entry.family == "robustbench" else ""
                raise ZooError(f"weights file missing: {p}{hint}", file=entry.entry_file, key="weights")
            if os.environ.get("RGBENCH_NO_DOWNLOAD"):
                raise ZooError(f"{w.file} is not in the weights cache ({p.parent}) and downloads are "
                               "off (RGBENCH_NO_DOWNLOAD); point RGBENCH_WEIGHTS at a folder holding "
                               f"{entry.cache_dir or entry.id}/{w.file}",
                               file=entry.entry_file, key="weights")
            p.parent.mkdir(parents=True, exist_ok=True)
            tmp = p.with_suffix(p.suffix + ".part")
            try:
                urllib.request.urlretrieve(w.url, tmp)  # noqa: S310 - https url from entry
            except OSError as e:
                raise ZooError(f"could not download {w.url}: {e}", file=entry.entry_file,
                               key="weights") from None
            tmp.replace(p)
        digest = sha256_file(p)
        if digest != w.sha256:
            raise ZooError(f"sha256 mismatch for {p}: expected {w.sha256}, got {digest}",
                           file=entry.entry_file, key="weights")
        out[w.role or w.file] = p
    return out


def _builder_from_folder(entry: ZooEntry):
    mod_name, _, fn_name = (entry.builder or "").partition(":")
    src = entry.path / f"{mod_name}.py"
    if not src.is_file() or not fn_name:
        raise ZooError(f"expected 'module:function' with {src.name} in the entry folder",
                       file=entry.entry_file, key="builder")
    spec = importlib.util.spec_from_file_location(f"rgbench_zoo_{entry.id.replace('/', '_')}", src)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        sys.modules.pop(spec.name, None)
        raise ZooError(f"syntax error: {e.msg} (the builder module of {entry.entry_file})",
                       file=src, line=e.lineno) from None
    except Exception as e:  # noqa: BLE001 - a user's module may raise anything on import
        sys.modules.pop(spec.name, None)
        raise ZooError(f"importing it failed: {type(e).__name__}: {e} (the builder module of "
                       f"{entry.entry_file})", file=src) from None
    fn = getattr(module, fn_name, None)
    if fn is None:
        raise ZooError(f"{src.name} has no function {fn_name!r}", file=entry.entry_file, key="builder")
    return fn


def build_defense(entry: ZooEntry, *, load_weights: bool = True):
    """Build the entry's defense and load its verified weights (strict)."""
    from robustgen_bench.defenses import get_family
    from robustgen_bench.weights import load_state_file

    if entry.builder:
        build = _builder_from_folder(entry)
    else:
        try:
            build = get_family(entry.family or "")
        except KeyError as e:
            raise ZooError(str(e.args[0]), file=entry.entry_file, key="family") from None
    try:
        defense = build(dict(entry.config), entry=entry)
    except (TypeError, ValueError) as e:
        raise ZooError(f"cannot build: {e}", file=entry.entry_file, key="config") from None
    if load_weights and entry.weights:
        paths = fetch_weights(entry)
        custom = getattr(defense, "load_weight_files", None)
        try:
            if custom is not None:
                custom(paths)
            else:
                if len(paths) != 1:
                    raise ZooError("several weights files need the family's load_weight_files",
                                   file=entry.entry_file, key="weights")
                state = load_state_file(next(iter(paths.values())))
                try:
                    defense.load_state_dict(state, strict=True)
                except RuntimeError as e:
                    raise ZooError(f"weights do not match the architecture: {str(e)[:400]}",
                                   file=entry.entry_file, key="weights") from None
        except ZooError as e:
            if e.file is not None:
                raise
            raise ZooError(e.detail, file=entry.entry_file, key=e.key or "weights") from None
    defense.eval()
    return defense
