"""Compression recipes: a TOML file that lists the steps of a compression so it can be rerun
exactly. Every key is checked; an unknown key or an impossible value raises RecipeError, one
line that names the key and says how to fix it.

    [recipe]
    name = "mnist-cnn-sparse90-int8"
    seed = 0

    [finetune]                 # training while pruning (and with distillation when [distill])
    epochs = 3
    lr = 5e-4
    optimizer = "adam"         # adam | adamw | sgd
    batch_size = 128

    [prune]
    sparsity = 0.9
    pattern = "unstructured"   # unstructured | 2:4 | block:RxC | channel
    scope = "layer"            # layer | global
    schedule = "gradual"       # gradual (over the fine-tune steps) | oneshot (before fine-tuning)
    start = 0.0                # gradual: ramp from this fraction of the fine-tune steps ...
    end = 0.7                  # ... to this one, then hold the final sparsity
    frequency = 20             # gradual: optimizer steps between mask updates
    layers = ["classifier\\.0"]  # regexes of the Linear layers to prune (default: all Linear)
    pack = true                # SparseLinear where sparsify's measured cost model says it pays
    force = false              # true: pack every pruned Linear (smallest file) regardless

    [distill]                  # teacher = the model as loaded, before compression
    temperature = 4.0
    alpha = 0.7

    [quantize]
    scheme = "int8_dynamic"
    skip = ["classifier\\.2"]  # layers kept in floating point (whole-name regexes)
    force = false              # true: int8 for every selected Linear, whatever the cost model
"""
import difflib
import math
import re
import tomllib
from typing import Any, Dict, List, Optional

PATTERN_RE = re.compile(r"^(unstructured|2:4|channel|block:(\d+)x(\d+))$")
SCHEMES = ("int8_dynamic",)
OPTIMIZERS = ("adam", "adamw", "sgd")


class RecipeError(ValueError):
    """A recipe that cannot run; the message is one line naming the key and the fix."""


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _regex_list(v) -> Optional[str]:
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        return "must be a list of layer-name regexes, e.g. [\"classifier\\\\.0\"]"
    for s in v:
        try:
            re.compile(s)
        except re.error as exc:
            return f"has an invalid regular expression {s!r} ({exc})"
    return None


# section -> key -> (default, check(value) -> problem or None). A default of None = optional.
def _check_range(lo, hi, lo_open=False, hi_open=False, integer=False, example=""):
    def check(v):
        ok = _int(v) if integer else _num(v)
        if ok:
            ok = (v > lo if lo_open else v >= lo) if lo is not None else True
            ok = ok and ((v < hi if hi_open else v <= hi) if hi is not None else True)
        if ok:
            return None
        kind = "an integer" if integer else "a number"
        lo_s = "" if lo is None else ("> " if lo_open else ">= ") + str(lo)
        hi_s = "" if hi is None else ("< " if hi_open else "<= ") + str(hi)
        bounds = " and ".join(s for s in (lo_s, hi_s) if s)
        return f"must be {kind} {bounds}" + (f", e.g. {example}" if example else "")
    return check


def _choice(options):
    def check(v):
        return None if v in options else f"must be one of {', '.join(map(repr, options))}"
    return check


def _check_pattern(v):
    if isinstance(v, str) and PATTERN_RE.match(v):
        m = PATTERN_RE.match(v)
        if m.group(2) is not None and (int(m.group(2)) < 1 or int(m.group(3)) < 1):
            return "block sizes must be >= 1, e.g. \"block:4x4\""
        return None
    return "must be \"unstructured\", \"2:4\", \"block:RxC\" (e.g. \"block:4x4\") or \"channel\""


def _check_str(v):
    return None if isinstance(v, str) else "must be a string"


def _check_bool(v):
    return None if isinstance(v, bool) else "must be true or false"


SCHEMA: Dict[str, Dict[str, tuple]] = {
    "recipe": {
        "name": ("compression", _check_str),
        "description": ("", _check_str),
        "seed": (0, _check_range(0, None, integer=True, example="seed = 0")),
    },
    "finetune": {
        "epochs": (1, _check_range(0, 1000, integer=True, example="epochs = 3")),
        "lr": (1e-3, _check_range(0, 10, lo_open=True, example="lr = 5e-4")),
        "optimizer": ("adam", _choice(OPTIMIZERS)),
        "momentum": (0.9, _check_range(0, 1, hi_open=True, example="momentum = 0.9")),
        "weight_decay": (0.0, _check_range(0, 1, example="weight_decay = 1e-4")),
        "batch_size": (128, _check_range(1, 1 << 20, integer=True, example="batch_size = 128")),
        "max_steps_per_epoch": (0, _check_range(0, None, integer=True,
                                                example="max_steps_per_epoch = 100 (0: all)")),
    },
    "prune": {
        "sparsity": (None, _check_range(0, 1, hi_open=True, example="sparsity = 0.9")),
        "pattern": ("unstructured", _check_pattern),
        "scope": ("layer", _choice(("layer", "global"))),
        "schedule": ("gradual", _choice(("gradual", "oneshot"))),
        "start": (0.0, _check_range(0, 1, example="start = 0.0")),
        "end": (0.7, _check_range(0, 1, lo_open=True, example="end = 0.7")),
        "frequency": (20, _check_range(1, None, integer=True, example="frequency = 20")),
        "initial_sparsity": (0.0, _check_range(0, 1, hi_open=True, example="initial_sparsity = 0.0")),
        "layers": ([], _regex_list),
        "skip": ([], _regex_list),
        "pack": (True, _check_bool),
        "force": (False, _check_bool),  # pack every pruned Linear, whatever the cost model says
    },
    "distill": {
        "temperature": (4.0, _check_range(0, 100, lo_open=True, example="temperature = 4.0")),
        "alpha": (0.5, _check_range(0, 1, example="alpha = 0.5")),
        "features": ([], _regex_list),
        "feature_weight": (1.0, _check_range(0, None, example="feature_weight = 1.0")),
    },
    "quantize": {
        "scheme": ("int8_dynamic", _choice(SCHEMES)),
        "layers": ([], _regex_list),
        "skip": ([], _regex_list),
        "force": (False, _check_bool),  # int8 for every selected Linear, whatever the cost model
    },
}
REQUIRED = {("prune", "sparsity")}


def _unknown(source: str, where: str, key: str, known) -> RecipeError:
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return RecipeError(f"{source}: unknown {where} {key!r}; {hint}allowed: {', '.join(known)}")


def parse_recipe(data: Dict[str, Any], source: str = "recipe") -> Dict[str, Dict[str, Any]]:
    """Validate a recipe given as a dict (as tomllib returns it); returns it with defaults
    filled in for every section present. [recipe] and [finetune] are always present."""
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: a recipe is a table of sections, got {type(data).__name__}")
    out: Dict[str, Dict[str, Any]] = {}
    for section, body in data.items():
        if section not in SCHEMA:
            raise _unknown(source, "section", section, SCHEMA)
        if not isinstance(body, dict):
            raise RecipeError(f"{source}: {section!r} must be a [{section}] table, got "
                              f"{type(body).__name__}; write it as [{section}] followed by keys")
        for key in body:
            if key not in SCHEMA[section]:
                raise _unknown(source, f"key in [{section}]:", key, SCHEMA[section])
    for section in SCHEMA:
        if section not in data and section not in ("recipe", "finetune"):
            continue
        body = data.get(section, {})
        resolved = {}
        for key, (default, check) in SCHEMA[section].items():
            if key not in body:
                if (section, key) in REQUIRED:
                    raise RecipeError(f"{source}: [{section}] needs {key}; add e.g. "
                                      f"{key} = 0.9 under [{section}]")
                resolved[key] = list(default) if isinstance(default, list) else default
                continue
            problem = check(body[key])
            if problem:
                raise RecipeError(f"{source}: [{section}] {key} = {body[key]!r} is impossible: "
                                  f"{key} {problem}")
            resolved[key] = body[key]
        out[section] = resolved
    _check_consistency(out, source)
    return out


def _check_consistency(r: Dict[str, Dict[str, Any]], source: str) -> None:
    ft = r["finetune"]
    if "prune" in r:
        p = r["prune"]
        if p["pattern"] == "2:4" and abs(p["sparsity"] - 0.5) > 1e-9:
            raise RecipeError(f"{source}: [prune] sparsity = {p['sparsity']} is impossible with "
                              "pattern = \"2:4\" (exactly 50% sparse); set sparsity = 0.5")
        if p["schedule"] == "gradual":
            if ft["epochs"] < 1:
                raise RecipeError(f"{source}: [prune] schedule = \"gradual\" prunes during "
                                  "fine-tuning but [finetune] epochs = 0; set epochs >= 1 or "
                                  "schedule = \"oneshot\"")
            if p["end"] <= p["start"]:
                raise RecipeError(f"{source}: [prune] end = {p['end']} must be greater than "
                                  f"start = {p['start']} (fractions of the fine-tune steps)")
            if p["initial_sparsity"] > p["sparsity"]:
                raise RecipeError(f"{source}: [prune] initial_sparsity = {p['initial_sparsity']}"
                                  f" exceeds sparsity = {p['sparsity']}; lower initial_sparsity")
    if "distill" in r and ft["epochs"] < 1:
        raise RecipeError(f"{source}: [distill] trains the student but [finetune] epochs = 0; "
                          "set epochs >= 1 or remove [distill]")


def load_recipe(path: str) -> Dict[str, Dict[str, Any]]:
    """Read and validate a recipe file (TOML)."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise RecipeError(f"recipe file {path} not found; pass an existing .toml file "
                          "(see examples/ for one)") from None
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{path}: not valid TOML ({exc}); fix the syntax at that line") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"recipe file {path} cannot be read ({exc})") from None
    return parse_recipe(data, source=path)


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def to_toml(recipe: Dict[str, Dict[str, Any]]) -> str:
    """The resolved recipe (every default written out) as TOML, so a run can be repeated."""
    lines: List[str] = []
    for section in SCHEMA:
        if section not in recipe:
            continue
        lines.append(f"[{section}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in recipe[section].items()]
        lines.append("")
    return "\n".join(lines)
