"""kvsim's commands from Python: the same subcommands as the CLI, run in-process, their output
files read back as pandas DataFrames (so a DataFrame holds exactly the values of the CSV file the
CLI writes). Keyword options are the CLI's options with '_' for '-': compression_point="aware",
window=64, nu="upper", threads=2, nu_cache="off"; True is a flag, None/False leave it out.
"""
import contextlib
import json
import os

from . import _kvsim
from .python_rules import specs_text


def _args(options):
    out = []
    for key, value in options.items():
        if value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            out.append(flag)
        elif isinstance(value, (list, tuple)):
            out += [flag, ",".join(str(v) for v in value)]
        else:
            out += [flag, str(value)]
    return out


def _budgets_text(budgets):
    if isinstance(budgets, str):
        return budgets
    if isinstance(budgets, (int, float)):
        budgets = [budgets]
    return ",".join(b if isinstance(b, str) else repr(b) for b in budgets)


def _path(trace):
    return trace.path if isinstance(trace, _kvsim.Trace) else os.fspath(trace)


@contextlib.contextmanager
def _progress(show):
    """kvsim's progress bar goes to the process's stderr; off unless asked for."""
    old = os.environ.get("KVSIM_PROGRESS")
    if not show:
        os.environ["KVSIM_PROGRESS"] = "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("KVSIM_PROGRESS", None)
        else:
            os.environ["KVSIM_PROGRESS"] = old


def run(*args, progress=False):
    """Runs `kvsim ARGS...` in-process; returns what it printed. A failure raises
    kvsim.KvsimError with the CLI's one-line message (ValueError subclass)."""
    with _progress(progress):
        code, out, err = _kvsim.run_command([str(a) for a in args])
    if code != 0:
        raise _kvsim.KvsimError(err.strip() or f"kvsim {args[0]} exited with {code}")
    return out


def _read_csv(path):
    import pandas as pd
    return pd.read_csv(path, keep_default_na=True)


class ReplayResult:
    """kvsim.replay with per_query or return_selection: .metrics (metrics.csv), .per_query
    (metrics_per_query.csv or None), .selection ({(rule, budget, layer): kept mask [units, n_c]},
    plus {(rule, budget, layer, "key_channels"): mask} for ThinK), .summary (summary.json)."""

    def __init__(self, metrics, per_query, selection, summary):
        self.metrics, self.per_query, self.selection, self.summary = metrics, per_query, selection, summary

    def __repr__(self):
        return f"<kvsim.ReplayResult {len(self.metrics)} metric rows>"


_REPLAY_OPTIONS = ("layers", "heads", "compression_point", "window", "eval", "nu", "nu_cache", "threads", "protocol",
                   "every", "decode_start", "admission")


def _engine_options(name, known, options, text=()):
    """The keyword options of kvsim.NAME(), checked against the CLI's (`known`): None dropped,
    lists joined with ',' and the `text` ones as strings, as the engine's typed call takes them."""
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise TypeError(f"kvsim.{name}() got unexpected keyword arguments {unknown} (its options: {', '.join(known)})")
    kw = {k: (",".join(str(x) for x in v) if isinstance(v, (list, tuple)) else v) for k, v in options.items()
          if v is not None}
    return {k: str(v) if k in text else v for k, v in kw.items()}


def _command(name, positional, out, options):
    """The `kvsim NAME ...` line the call equals (summary.json records it)."""
    return " ".join(["kvsim", name, *positional] + (["--out", out] if out else []) + _args(options))


def frame(table):
    """A DataFrame from the engine's columns ({"columns", "types", "data"}), in the declared dtypes."""
    import pandas as pd
    return pd.DataFrame(dict(zip(table["columns"], table["data"])), columns=table["columns"])


def read_table(path, table=None):
    """A kvsim output CSV file (metrics.csv, metrics_per_query.csv, sweep_metrics.csv, key_stats.csv,
    prefill's metrics.csv, ...) read in its declared column types (`kvsim columns`), doubles exactly
    as written: equal to the DataFrame the API returns for the same run. The table is the declared
    one whose columns the file's header spells (or `table`, a name `kvsim columns` lists)."""
    import pandas as pd
    tables = _kvsim.output_tables()
    if table is None:
        with open(path, encoding="utf-8") as fh:
            header = fh.readline().rstrip("\r\n").split(",")
        name = os.path.basename(os.fspath(path))
        matches = [t for t, cols in tables.items() if [c[0] for c in cols] == header]
        matches.sort(key=lambda t: t != name)  # the file's own name first
        if not matches:
            raise ValueError(f"{path}: its header matches no declared kvsim table (kvsim columns lists them)")
        table = matches[0]
    cols = tables[table]
    dtype = {c: {"str": object, "int64": "int64", "float64": "float64"}[t] for c, t, _, _ in cols}
    # Text stays text ("nan" is a budget only by accident); a missing real (prefill's dense layers) is NaN.
    na = {c: ["nan", ""] for c, t, _, _ in cols if t == "float64"}
    return pd.read_csv(path, dtype=dtype, keep_default_na=False, na_values=na, float_precision="round_trip")


def _selection_dict(entries):
    out = {}
    for e in entries:
        key = (e["rule"], e["budget"], e["layer"])
        out[key] = e["kept"]
        if e["key_channels"] is not None:
            out[key + ("key_channels",)] = e["key_channels"]
    return out


def replay(trace, rules="default", budgets=(0.1, 0.2), layers=None, heads=None, per_query=False,
           return_selection=False, out=None, progress=False, **options):
    """Replays `trace` (a path or kvsim.Trace) through `rules` (spec string with ';', Python rules,
    kvsim.wrap(...), or a list of them) at `budgets` (0.2, "20%", "cr=0.8", 512, or a list).
    Options are kvsim replay's: compression_point="aware", window=64, eval="both", nu="upper",
    nu_cache="off" (or a folder), threads=2, protocol="decode" with every=64 and
    decode_start="full"|"compressed" and admission="evict"|"append-only" (compression while generating,
    rules doc 1.9).
    Returns the metrics.csv rows as a DataFrame (df.attrs["summary"] holds summary.json and
    df.attrs["table"] the printed table); with per_query or return_selection, a ReplayResult.
    The engine hands its columns over directly (no file is written or read); out=DIR also writes
    kvsim replay's files there."""
    path, specs, budget_text = _path(trace), specs_text(rules), _budgets_text(budgets)
    out = os.fspath(out) if out is not None else ""
    kw = _engine_options("replay", _REPLAY_OPTIONS, dict(layers=layers, heads=heads, **options),
                         text=("layers", "heads", "compression_point", "eval", "nu", "nu_cache", "protocol",
                               "decode_start", "admission"))
    command = _command("replay", [path, "--rules", specs, "--budgets", budget_text], out,
                       dict(kw, per_query=per_query, save_selection=return_selection))
    with _progress(progress):
        r = _kvsim.replay(path, specs, budget_text, out=out, per_query=bool(per_query),
                          save_selection=bool(return_selection), command=command, **kw)
    df = frame(r["metrics"])
    summary = json.loads(r["summary"])
    df.attrs["summary"] = summary
    df.attrs["table"] = r["table"]
    if r.get("per_question") is not None:  # a multi-question trace: metrics_per_question.csv
        df.attrs["per_question"] = frame(r["per_question"])
    if not (per_query or return_selection):
        return df
    pq = frame(r["per_query"]) if per_query else None
    sel = _selection_dict(r["selection"]) if return_selection else None
    return ReplayResult(df, pq, sel, summary)


def calibrate_threshold(trace, rule, fraction, compression_point="agnostic", window=32):
    """The threshold X at which the budget "thr=X" makes `rule` (a plain scorer or dms(...)) keep
    `fraction` of the trace's compressible tokens over all layers and units together, for a
    comparison at matched kept tokens in which each head and layer still keeps its own count
    (rules doc 1.4). Returns {"threshold", "kept_fraction" (achieved), "candidates"}."""
    return dict(_kvsim.calibrate_threshold(_path(trace), specs_text(rule), float(fraction),
                                           compression_point=compression_point, window=int(window)))


def analyze(trace, out=None, progress=False, **options):
    """`kvsim analyze` (KeyDiff premise statistics): key_stats.csv as a DataFrame;
    df.attrs["recall"] is key_recall.csv, df.attrs["summary"] summary.json. Options are the CLI's:
    layers="0-3", compression_point="aware", window=64, top="0.1,16". The engine hands its columns
    over directly; out=DIR also writes the files there."""
    path, out = _path(trace), (os.fspath(out) if out is not None else "")
    kw = _engine_options("analyze", ("layers", "compression_point", "window", "top"), options,
                         text=("layers", "compression_point", "top"))
    command = _command("analyze", [path], out, kw)
    with _progress(progress):
        r = _kvsim.analyze(path, out=out, command=command, **kw)
    df = frame(r["key_stats"])
    df.attrs.update(recall=frame(r["key_recall"]), summary=json.loads(r["summary"]), table=r["table"])
    return df


def prefill(trace, out=None, progress=False, **options):
    """`kvsim prefill` (CritiPrefill simulation): metrics.csv as a DataFrame; df.attrs["locality"]
    is locality.csv, df.attrs["locality_shuffled"] its shuffled baseline (locality_shuffled.csv),
    df.attrs["summary"] summary.json. Options are the CLI's: segment, block, budget, threshold,
    layer_skip, fusion ("on", "off", "both"), locality_anchors. The engine hands its columns over
    directly; out=DIR also writes the files there."""
    path, out = _path(trace), (os.fspath(out) if out is not None else "")
    kw = _engine_options("prefill", ("segment", "block", "budget", "threshold", "layer_skip", "fusion",
                                     "locality_anchors"), options)
    command = _command("prefill", [path], out, kw)
    with _progress(progress):
        r = _kvsim.prefill(path, out=out, command=command, **kw)
    df = frame(r["metrics"])
    df.attrs.update(locality=frame(r["locality"]), locality_shuffled=frame(r["locality_shuffled"]),
                    summary=json.loads(r["summary"]), table=r["table"])
    return df


def rules():
    """The rule catalogue: one row per (rule, parameter) with type, default and help."""
    import pandas as pd
    rows = []
    for r in _kvsim.rule_catalogue():
        for p in r["params"] or [{"name": "", "type": "", "default": "", "help": ""}]:
            rows.append(dict(rule=r["name"], summary=r["summary"], in_default=r["in_default"], param=p["name"],
                             type=p["type"], default=p["default"], help=p["help"]))
    return pd.DataFrame(rows)
