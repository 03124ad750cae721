"""Selection rules written in Python (numpy, torch, anything returning an array).

A rule is registered in kvsim's C++ rule registry under its name, so it is a spec string like any
other: "my_rule", "ada(my_rule,alpha=0.2)", "critical(ada(my_rule))". Creating a rule with the
name of an earlier Python rule replaces it (re-running a notebook cell) with a warning; a rule's
unregister() removes only its own registration. Built-in names are refused.
"""
import warnings

from . import _kvsim


class _PythonRule:
    kind = ""

    def __init__(self, name):
        self.name = name
        self._token = None

    def _registered(self, registration):
        self._token, replaced = registration
        if replaced:
            warnings.warn(f"kvsim: Python rule {self.name!r} replaces an earlier rule of that name; specs naming "
                          f"{self.name!r} now run this one", stacklevel=3)

    @property
    def spec(self):
        return self.name

    def __str__(self):
        return self.name

    def __repr__(self):
        return f"kvsim.{type(self).__name__}({self.name!r})"

    def unregister(self):
        """Removes this rule from the registry (it is removed at exit anyway); a later rule that took
        its name stays. Returns whether this rule was still registered."""
        return bool(self._token is not None and _kvsim._unregister_rule(self.name, self._token))


class ScoreRule(_PythonRule):
    """fn(layer) -> scores, higher = keep, shape [num_kv_heads, n_c] (one set per KV head) or
    [num_heads, n_c] (per query head: reduced to KV heads by `gqa` = mean|max|sum, or one set per
    query head with gqa="query").

    `layer` (kvsim.LayerView) holds read-only numpy arrays: k, v [num_kv_heads, n_c, head_dim] (the
    compressible tokens), keys/values (every position), q (every stored query), q_window (the last
    `window` queries before n_c), q_eval, o_proj, positions, n_c, layer. kvsim applies the budget
    (tokens per unit, protected included), keeps the last `protect_window` tokens, takes the top
    scores (ties to the lower position) and measures the perturbation and both bounds.
    attention=True declares the scores attention-like, so ada(), critical() and pyramid() wrap it.
    Exceptions in fn raise kvsim.RuleError naming the rule and the layer (the original is its
    __cause__); KeyboardInterrupt and SystemExit propagate as themselves; a wrong shape, a NaN or
    a non-real dtype (complex, string, object) is a kvsim.KvsimError.
    """
    kind = "score"

    def __init__(self, name, fn, gqa="mean", protect_window=0, window=32, attention=True):
        super().__init__(name)
        self.fn = fn
        self._registered(_kvsim._register_score_rule(name, fn, gqa, int(protect_window), int(window),
                                                     bool(attention)))


class MaskRule(_PythonRule):
    """fn(layer, budget) -> kept mask [num_kv_heads, n_c] or [num_heads, n_c] (bool or 0/1), for
    budget.tokens kept tokens per unit (budget.text, budget.fraction also given). A row keeping
    more than budget.tokens is a kvsim.KvsimError (fewer is allowed)."""
    kind = "mask"

    def __init__(self, name, fn, window=32):
        super().__init__(name)
        self.fn = fn
        self._registered(_kvsim._register_mask_rule(name, fn, int(window)))


def _spec(rule):
    if isinstance(rule, (str, _PythonRule, Wrapped)):
        return str(rule)
    raise TypeError(f"a rule is a spec string, a kvsim.ScoreRule/MaskRule or kvsim.wrap(...), not {type(rule).__name__}")


class Wrapped:
    """A spec string built by kvsim.wrap, e.g. ada(my_rule,alpha=0.2)."""

    def __init__(self, text):
        self.spec = text

    def __str__(self):
        return self.spec

    def __repr__(self):
        return f"kvsim.wrap -> {self.spec!r}"


def wrap(wrapper, rule, **params):
    """kvsim's wrappers around any rule: wrap("ada", r, alpha=0.2), wrap("critical", r),
    wrap("pyramid", r), wrap("chunkkv", r), wrap("think", r); returns a rule usable in replay."""
    args = [_spec(rule)] + [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in params.items()]
    text = f"{wrapper}({','.join(args)})"
    _kvsim.canonical_spec(text)  # a bad wrapper or parameter fails here, naming it
    return Wrapped(text)


def specs_text(rules):
    """rules (a spec string with ';', a rule, or a list of them) -> the --rules text."""
    if isinstance(rules, (list, tuple)):
        return ";".join(_spec(r) for r in rules)
    return _spec(rules)


def select(rule, k, budgets, v=None, q=None, q_pos=None, o_proj=None, n_c=None, attn_scale=None, num_heads=None):
    """Runs a rule (spec string or Python rule) on arrays of one layer, no trace needed: keys k
    [num_kv_heads, T, head_dim] at positions 0..T-1 (and values v), queries q [num_heads, Nq,
    head_dim] at positions q_pos, o_proj [hidden, num_heads*head_dim]. Tokens [0, n_c) (default
    all T) are compressible. Returns one kept mask [units, n_c] (bool) per budget."""
    import numpy as np
    k = np.asarray(k, dtype=np.float32)
    if isinstance(budgets, (str, int, float)):
        budgets = [budgets]
    texts = [b if isinstance(b, str) else repr(b) for b in budgets]
    return _kvsim._select(_spec(rule), k, v, q, None if q_pos is None else np.asarray(q_pos, dtype=np.int64), o_proj,
                          int(k.shape[1] if n_c is None else n_c), texts, float(attn_scale or 0),
                          int(num_heads or 0))
