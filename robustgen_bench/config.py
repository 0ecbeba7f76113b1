"""Suite YAML -> frozen, typed config objects.

Every problem is a :class:`ConfigError` naming the file, the key (with its line where YAML gives
it) and what was expected. ``include:`` pulls in other suite files (the including file wins;
mappings merge, lists replace); ``--set a.b=value`` overrides apply after includes and are
validated like file content.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from robustgen_bench.adaptive import WarmStart
from robustgen_bench.attacks.spec import AttackSpec
from robustgen_bench.checks.spec import ChecksSpec, parse_checks
from robustgen_bench.data import DatasetName
from robustgen_bench.errors import ConfigError, UserInputError, did_you_mean
from robustgen_bench.threat import Threat

TOP_KEYS = ("name", "description", "include", "dataset", "models", "attacks", "stats", "report", "run",
            "checks")
DATASET_KEYS = ("name", "split", "n", "seed")
ATTACK_RESERVED = ("id", "library", "attack", "threat", "epsilon", "params", "verify_draws",
                   "surrogate", "eot")
STATS_KEYS = ("test", "alpha", "correction")
REPORT_KEYS = ("formats", "plots")
RUN_KEYS = ("batch_size", "verify_draws", "save_examples", "surrogate")
SURROGATE_KEYS = ("warm_steps", "radius")
REPORT_FORMATS = ("md", "tex", "csv", "html")
_FRACTION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)\s*$")


@dataclass(frozen=True)
class DatasetSpec:
    name: DatasetName
    split: str = "test"
    n: int = 100
    seed: int = 0


@dataclass(frozen=True)
class StatsSpec:
    test: str = "mcnemar"
    alpha: float = 0.01
    correction: str = "none"


@dataclass(frozen=True)
class ReportSpec:
    formats: tuple[str, ...] = ("md", "tex", "csv")
    plots: bool = True


@dataclass(frozen=True)
class RunSpec:
    """Execution knobs that do not change results: batch size, examples kept for plots.

    ``verify_draws`` does change results for randomized defenses, so it is part of each cell key.
    """

    batch_size: int = 16
    verify_draws: int = 5
    save_examples: int = 8
    #: The default surrogate of the suite's attacks (None: full inference at every step);
    #: an attack's own ``surrogate:`` wins. Recorded in each attack's cell key.
    surrogate: WarmStart | None = None


@dataclass(frozen=True)
class Suite:
    """A validated suite. ``attacks`` holds one :class:`AttackSpec` per (attack, epsilon)."""

    name: str
    dataset: DatasetSpec
    models: tuple[str, ...]
    attacks: tuple[AttackSpec, ...]
    stats: StatsSpec = StatsSpec()
    report: ReportSpec = ReportSpec()
    run: RunSpec = RunSpec()
    # Attack-failure checks (robustgen_bench.checks); not part of canonical(): they read the
    # stored rows and never change them, so the suite hash of existing runs stays the same.
    checks: ChecksSpec = ChecksSpec()
    source: Path | None = None
    raw: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    # the command-line changes applied on top of the file (recorded in the manifest so a run
    # can be reproduced; they are already reflected in the canonical form and its hash)
    overrides: tuple[str, ...] = ()
    limit: int | None = None

    def canonical(self) -> dict[str, Any]:
        """JSON-able canonical form (for the manifest and the suite hash)."""
        return {
            "name": self.name,
            "dataset": {"name": self.dataset.name.value, "split": self.dataset.split,
                        "n": self.dataset.n, "seed": self.dataset.seed},
            "models": list(self.models),
            "attacks": [a.canonical() for a in self.attacks],
            "stats": {"test": self.stats.test, "alpha": self.stats.alpha,
                      "correction": self.stats.correction},
            "report": {"formats": list(self.report.formats), "plots": self.report.plots},
            "run": {"batch_size": self.run.batch_size, "verify_draws": self.run.verify_draws,
                    "save_examples": self.run.save_examples,
                    **({"surrogate": self.run.surrogate.canonical()} if self.run.surrogate else {})},
        }

    def hash(self) -> str:
        return hashlib.sha256(json.dumps(self.canonical(), sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Reading YAML with line numbers


class _Doc:
    """Parsed YAML plus where each key path came from (file, line)."""

    def __init__(self) -> None:
        self.lines: dict[tuple[Any, ...], tuple[str, int]] = {}

    def where(self, path: tuple[Any, ...]) -> tuple[str | None, int | None]:
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get((), (None, None))


def _index_lines(node: yaml.Node, file: str, path: tuple[Any, ...], doc: _Doc) -> None:
    doc.lines[path] = (file, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = k.value if isinstance(k, yaml.ScalarNode) else str(k)
            doc.lines[path + (key,)] = (file, k.start_mark.line + 1)
            _index_lines(v, file, path + (key,), doc)
            doc.lines[path + (key,)] = (file, k.start_mark.line + 1)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _index_lines(v, file, path + (i,), doc)


def _read_yaml(path: Path, doc: _Doc) -> Any:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError("file not found", file=path) from None
    except IsADirectoryError:
        raise ConfigError("expected a YAML file, got a directory", file=path) from None
    except UnicodeDecodeError:
        raise ConfigError("not a text file", file=path) from None
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise ConfigError(f"invalid YAML: {getattr(e, 'problem', None) or e}", file=path,
                          line=None if mark is None else mark.line + 1) from None
    if node is not None:
        _index_lines(node, str(path), (), doc)
    return data


def _merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = _merge(base[k], v) if k in base else v
        return out
    return over


def _load_with_includes(path: Path, doc: _Doc, stack: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve() if path.exists() else path
    if path in stack:
        chain = " -> ".join(p.name for p in stack + (path,))
        raise ConfigError(f"include cycle: {chain}", file=stack[-1], key="include")
    data = _read_yaml(path, doc)
    if data is None:
        raise ConfigError("the suite file is empty; expected a mapping with name, dataset, models, attacks",
                          file=path)
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping at the top level, got {type(data).__name__}", file=path,
                          line=1)
    inc = data.pop("include", None)
    if inc is None:
        return data
    incs = [inc] if isinstance(inc, str) else inc
    if not isinstance(incs, list) or not all(isinstance(i, str) for i in incs):
        f, line = doc.where(("include",))
        raise ConfigError("expected a file path or a list of file paths", file=path, key="include",
                          line=line)
    merged: dict[str, Any] = {}
    for i in incs:
        merged = _merge(merged, _load_with_includes(path.parent / i, doc, stack + (path,)))
    return _merge(merged, data)


# ---------------------------------------------------------------------------------------------
# Overrides


def _apply_override(data: dict[str, Any], expr: str) -> None:
    """Apply ``a.b.c=value``; ``attacks.<id>.<key>`` addresses an attack by its id."""
    if "=" not in expr:
        raise ConfigError(f"expected KEY=VALUE, got {expr!r}", file="--set")
    key, _, text = expr.partition("=")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    parts = key.strip().split(".")
    if not parts or not all(parts):
        raise ConfigError(f"expected a dotted key, got {key!r}", file="--set")
    cur: Any = data
    for i, p in enumerate(parts[:-1]):
        if isinstance(cur, list):
            match = [a for a in cur if isinstance(a, dict) and a.get("id") == p]
            if not match:
                ids = [a.get("id") for a in cur if isinstance(a, dict)]
                raise ConfigError(f"no attack with id {p!r}.{did_you_mean(p, [str(x) for x in ids])}",
                                  file="--set", key=".".join(parts[: i + 1]))
            cur = match[0]
        elif isinstance(cur, dict):
            if p not in cur or not isinstance(cur[p], (dict, list)):
                cur[p] = cur.get(p) if isinstance(cur.get(p), (dict, list)) else {}
            cur = cur[p]
        else:
            raise ConfigError("cannot set a key inside a scalar", file="--set", key=key)
    if not isinstance(cur, dict):
        raise ConfigError("expected a mapping to set the key in", file="--set", key=key)
    cur[parts[-1]] = value


# ---------------------------------------------------------------------------------------------
# Validation


class _Validator:
    def __init__(self, file: Path, doc: _Doc) -> None:
        self.file = file
        self.doc = doc

    def fail(self, path: tuple[Any, ...], msg: str) -> ConfigError:
        f, line = self.doc.where(path)
        key = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in path).replace(".[", "[")
        return ConfigError(msg, file=f or self.file, key=key or None, line=line)

    def mapping(self, v: Any, path: tuple[Any, ...], allowed: Sequence[str]) -> dict[str, Any]:
        if not isinstance(v, dict):
            raise self.fail(path, f"expected a mapping, got {_tname(v)}")
        for k in v:
            if k not in allowed:
                raise self.fail(path + (k,), f"unknown key.{did_you_mean(str(k), list(allowed))}")
        return v

    def require(self, m: dict[str, Any], key: str, path: tuple[Any, ...]) -> Any:
        if key not in m:
            raise self.fail(path, f"missing required key '{key}'")
        return m[key]

    def string(self, v: Any, path: tuple[Any, ...]) -> str:
        if not isinstance(v, str) or not v.strip():
            raise self.fail(path, f"expected a non-empty string, got {_tname(v)}")
        return v

    def integer(self, v: Any, path: tuple[Any, ...], minimum: int = 0) -> int:
        if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
            raise self.fail(path, f"expected an integer >= {minimum}, got {v!r}")
        return v

    def number(self, v: Any, path: tuple[Any, ...]) -> float:
        if isinstance(v, bool):
            raise self.fail(path, f"expected a number, got {v!r}")
        if isinstance(v, (int, float)):
            return float(v)
        if isinstance(v, str):
            m = _FRACTION.match(v)
            if m and float(m.group(2)) != 0:
                return float(m.group(1)) / float(m.group(2))
        raise self.fail(path, f"expected a number or a fraction like 8/255, got {v!r}")


def _tname(v: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", type(None): "nothing"}.get(
        type(v), type(v).__name__)


def _surrogate(v: _Validator, value: Any, path: tuple[Any, ...]) -> WarmStart | None:
    """``full`` (None) or ``{warm_steps: k, radius: r}`` (a :class:`WarmStart`)."""
    if value == "full":
        return None
    if not isinstance(value, dict):
        raise v.fail(path, f"expected 'full' or a mapping {{warm_steps: K, radius: R}}, got {value!r}")
    m = v.mapping(value, path, SURROGATE_KEYS)
    steps = v.integer(v.require(m, "warm_steps", path), path + ("warm_steps",), 1)
    radius = v.number(m.get("radius", WarmStart.radius), path + ("radius",))
    if radius <= 0:
        raise v.fail(path + ("radius",), f"expected a positive L2 distance, got {radius!r}")
    return WarmStart(steps=steps, radius=radius)


def _validate(data: dict[str, Any], file: Path, doc: _Doc, limit: int | None) -> Suite:
    from robustgen_bench.attacks import get_attack_class
    from robustgen_bench.attacks.backends import missing_library
    from robustgen_bench.zoo import entry_ids, get_entry

    v = _Validator(file, doc)
    top = v.mapping(data, (), TOP_KEYS)
    name = v.string(v.require(top, "name", ()), ("name",))
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise v.fail(("name",), "expected letters, digits, '.', '_' or '-' (it names the run folder)")

    ds = v.mapping(v.require(top, "dataset", ()), ("dataset",), DATASET_KEYS)
    ds_name = v.string(v.require(ds, "name", ("dataset",)), ("dataset", "name"))
    try:
        dname = DatasetName(ds_name)
    except ValueError:
        raise v.fail(("dataset", "name"), f"unknown dataset {ds_name!r}; expected one of "
                     f"{[d.value for d in DatasetName]}.") from None
    split = ds.get("split", "test")
    if split not in ("train", "test"):
        raise v.fail(("dataset", "split"), f"expected 'train' or 'test', got {split!r}")
    n = v.integer(ds.get("n", 100), ("dataset", "n"), minimum=1)
    if limit is not None:
        n = min(n, limit)
    seed = v.integer(ds.get("seed", 0), ("dataset", "seed"))
    dataset = DatasetSpec(dname, split, n, seed)

    models_raw = v.require(top, "models", ())
    if not isinstance(models_raw, list) or not models_raw:
        raise v.fail(("models",), f"expected a non-empty list of zoo ids, got {_tname(models_raw)}")
    known = entry_ids()
    models: list[str] = []
    for i, m in enumerate(models_raw):
        mid = v.string(m, ("models", i))
        if mid not in known:
            raise v.fail(("models", i), f"unknown zoo model {mid!r}.{did_you_mean(mid, known)}")
        if mid in models:
            raise v.fail(("models", i), f"model {mid!r} listed twice")
        entry = get_entry(mid)  # a broken entry.yaml is a ZooError naming its file
        if entry.dataset != dname.value:
            raise v.fail(("models", i), f"model {mid!r} is a {entry.dataset} model (dataset: "
                         f"{entry.dataset} in {entry.entry_file}), but the suite's dataset is "
                         f"{dname.value}; use a {dname.value} model or a {entry.dataset} suite")
        models.append(mid)

    run_raw = v.mapping(top.get("run", {}) or {}, ("run",), RUN_KEYS)
    run = RunSpec(
        batch_size=v.integer(run_raw.get("batch_size", RunSpec.batch_size), ("run", "batch_size"), 1),
        verify_draws=v.integer(run_raw.get("verify_draws", RunSpec.verify_draws),
                               ("run", "verify_draws"), 1),
        save_examples=v.integer(run_raw.get("save_examples", RunSpec.save_examples),
                                ("run", "save_examples"), 0),
        surrogate=_surrogate(v, run_raw.get("surrogate", "full"), ("run", "surrogate")),
    )

    attacks_raw = top.get("attacks", [])
    if not isinstance(attacks_raw, list):
        raise v.fail(("attacks",), f"expected a list of attacks, got {_tname(attacks_raw)}")
    specs: list[AttackSpec] = []
    seen: set[str] = set()
    for i, a in enumerate(attacks_raw):
        p = ("attacks", i)
        if not isinstance(a, dict):
            raise v.fail(p, f"expected a mapping with id, library, attack, threat, epsilon, got {_tname(a)}")
        for k in ("id", "library", "attack", "threat", "epsilon"):
            v.require(a, k, p)
        aid = v.string(a["id"], p + ("id",))
        if aid in seen:
            raise v.fail(p + ("id",), f"attack id {aid!r} used twice")
        seen.add(aid)
        if aid == "clean":
            raise v.fail(p + ("id",), "'clean' is reserved for clean accuracy")
        library = v.string(a["library"], p + ("library",))
        attack = v.string(a["attack"], p + ("attack",))
        try:
            cls = get_attack_class(library, attack)
        except KeyError as e:
            raise v.fail(p + ("attack",), str(e.args[0]) if e.args else f"unknown attack {attack!r}") from None
        missing = missing_library(library)
        if missing:
            raise v.fail(p + ("library",), missing)
        try:
            threat = Threat(a["threat"])
        except ValueError:
            raise v.fail(p + ("threat",), f"expected 'linf' or 'l2', got {a['threat']!r}") from None
        allowed = getattr(cls, "THREATS", frozenset(Threat))
        if threat not in allowed:
            raise v.fail(p + ("threat",), f"{library}/{attack} supports "
                         f"{' or '.join(sorted(repr(t.value) for t in allowed))}, got {threat.value!r}")
        eps_raw = a["epsilon"]
        eps_list = eps_raw if isinstance(eps_raw, list) else [eps_raw]
        if not eps_list:
            raise v.fail(p + ("epsilon",), "expected at least one epsilon")
        epsilons = []
        for j, e in enumerate(eps_list):
            ep = p + ("epsilon",) + ((j,) if isinstance(eps_raw, list) else ())
            val = v.number(e, ep)
            if val < 0:
                raise v.fail(ep, f"expected a non-negative budget, got {val}")
            epsilons.append(val)
        params: dict[str, Any] = {}
        extra = a.get("params", {}) or {}
        if not isinstance(extra, dict):
            raise v.fail(p + ("params",), f"expected a mapping, got {_tname(extra)}")
        inline = {k: val for k, val in a.items() if k not in ATTACK_RESERVED}
        for k in set(inline) & set(extra):
            raise v.fail(p + (k,), "given both inline and under 'params'")
        params.update(extra)
        params.update(inline)

        def where(key: str) -> tuple[Any, ...]:
            return p + ((key,) if key in inline or key in ("verify_draws", "eot")
                        else ("params", key) if key else ())

        # Sweeps: a scalar parameter (or verify_draws / eot) given as a list is one cell per value.
        # In the order the suite gives them: the first swept key is the x axis of the sweep's plot.
        sweep_keys = [k for k in dict.fromkeys([*a, *extra])
                      if (k in ("verify_draws", "eot") and isinstance(a.get(k), list))
                      or (k not in ATTACK_RESERVED and isinstance(params.get(k), list)
                          and k in cls.PARAMS and cls.PARAMS[k].kind is not list)]
        for k in sweep_keys:
            values = params[k] if k in params else a[k]
            if not values:
                raise v.fail(where(k), "expected at least one value in the sweep")
            if len(set(map(repr, values))) != len(values):
                raise v.fail(where(k), f"a value is listed twice in the sweep {values!r}")
        combos = list(itertools.product(*[
            list(enumerate(params[k] if k in params else a[k])) for k in sweep_keys]))
        warm = (_surrogate(v, a["surrogate"], p + ("surrogate",)) if "surrogate" in a
                else run.surrogate)
        for combo in combos:
            point = dict(zip(sweep_keys, combo))  # key -> (position in its list, value)
            cell_params = {**params, **{k: val for k, (_, val) in point.items() if k in params}}
            try:
                cls.validate_params(cell_params)
            except UserInputError as e:
                key = e.key or ""
                path = where(key) + ((point[key][0],) if key in point else ())
                raise v.fail(path, e.detail) from None
            vd_raw = point["verify_draws"][1] if "verify_draws" in point else a.get(
                "verify_draws", run.verify_draws)
            vd = v.integer(vd_raw, where("verify_draws") + (
                (point["verify_draws"][0],) if "verify_draws" in point else ()), 1)
            eot = None
            if "eot" in a:
                eot_raw = point["eot"][1] if "eot" in point else a["eot"]
                eot = v.integer(eot_raw, where("eot") + (
                    (point["eot"][0],) if "eot" in point else ()), 1)
            cell_id, sweep = aid, tuple((k, val) for k, (_, val) in point.items())
            if sweep:
                cell_id = f"{aid}@" + ",".join(f"{k}={_sweep_text(val)}" for k, val in sweep)
                if cell_id in seen:
                    raise v.fail(p + ("id",), f"the sweep's cell id {cell_id!r} is already used")
                seen.add(cell_id)
            for eps in epsilons:
                specs.append(AttackSpec(id=cell_id, library=library, attack=attack, threat=threat,
                                        epsilon=eps, params=MappingProxyType(dict(cell_params)),
                                        verify_draws=vd, seed=seed, surrogate=warm, eot=eot,
                                        sweep_of=aid if sweep else None, sweep=sweep))

    st = v.mapping(top.get("stats", {}) or {}, ("stats",), STATS_KEYS)
    test = st.get("test", "mcnemar")
    if test != "mcnemar":
        raise v.fail(("stats", "test"), f"expected 'mcnemar', got {test!r}")
    alpha = v.number(st.get("alpha", 0.01), ("stats", "alpha"))
    if not 0 < alpha < 1:
        raise v.fail(("stats", "alpha"), f"expected a number in (0, 1), got {alpha}")
    corr = st.get("correction", "none")
    if corr not in ("holm", "none"):
        raise v.fail(("stats", "correction"), f"expected 'holm' or 'none', got {corr!r}")

    rp = v.mapping(top.get("report", {}) or {}, ("report",), REPORT_KEYS)
    formats = rp.get("formats", list(ReportSpec.formats))
    if not isinstance(formats, list) or any(f not in REPORT_FORMATS for f in formats):
        raise v.fail(("report", "formats"), f"expected a list drawn from {list(REPORT_FORMATS)}, got {formats!r}")
    plots = rp.get("plots", True)
    if not isinstance(plots, bool):
        raise v.fail(("report", "plots"), f"expected true or false, got {plots!r}")

    checks = parse_checks(top.get("checks"), v, known)

    return Suite(name=name, dataset=dataset, models=tuple(models), attacks=tuple(specs),
                 stats=StatsSpec(test, alpha, corr), report=ReportSpec(tuple(formats), plots),
                 run=run, checks=checks, source=file, raw=MappingProxyType(data))


def _sweep_text(value: Any) -> str:
    """A swept value as it appears in a cell id: ``steps=10``, ``rel_stepsize=0.05``, ``loss=ce``."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def load_suite(path: str | Path, overrides: Sequence[str] = (), limit: int | None = None) -> Suite:
    """Read, merge includes, apply ``--set`` overrides, validate. Raises :class:`ConfigError`."""
    path = Path(path)
    doc = _Doc()
    data = _load_with_includes(path, doc)
    for expr in overrides:
        _apply_override(data, expr)
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"expected a positive integer, got {limit!r}", file="--limit")
    return replace(_validate(data, path, doc, limit), overrides=tuple(overrides), limit=limit)
