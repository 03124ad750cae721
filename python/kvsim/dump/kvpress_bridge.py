"""kvpress presses as kvsim sees them: which tokens a press keeps, per layer and KV head.

A press is given as a Python-like expression over kvpress's own classes, e.g.
"SnapKVPress(window_size=32)" or "AdaKVPress(press=ExpectedAttentionPress(epsilon=1e-2))";
it is parsed (never eval'ed: only calls of kvpress press classes with constant arguments).

What a press keeps is read off its own compress(): kvpress either gathers the kept keys (most
presses) or leaves the keys in place and lists the evicted ones in module.masked_key_indices
(AdaKV-style head-wise presses). Kept indices are recovered by matching the returned key rows
against the input keys, so any press that selects tokens works, whatever its algorithm; presses
that merge or change keys are refused. Key-channel pruning (ThinK) is reported as channel masks.
"""
import ast
import contextlib
import re

import numpy as np

from kvsim.dump.errors import DumpError


def press_classes():
    import inspect

    import kvpress
    from kvpress.presses.base_press import BasePress
    return {name: obj for name, obj in vars(kvpress).items()
            if inspect.isclass(obj) and issubclass(obj, BasePress) and obj is not BasePress}


def parse_press(expr):
    """Builds the press of an expression such as 'AdaKVPress(press=SnapKVPress(window_size=8))'."""
    classes = press_classes()
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError as e:
        raise DumpError("--kvpress-press", f"'{expr}': not a press expression ({e.msg})")

    def build(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool, type(None))):
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant):
            return -node.operand.value
        if isinstance(node, ast.Name) and node.id in classes:
            return classes[node.id]()
        if isinstance(node, ast.List):  # ComposedPress(presses=[...])
            return [build(e) for e in node.elts]
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id not in classes:
                raise DumpError("--kvpress-press", f"'{node.func.id}' is not a kvpress press (known: "
                                                   f"{', '.join(sorted(classes))})")
            try:
                return classes[node.func.id](*[build(a) for a in node.args],
                                             **{k.arg: build(k.value) for k in node.keywords})
            except (TypeError, AssertionError, ValueError) as e:
                raise DumpError("--kvpress-press", f"'{expr}': {node.func.id}: {e}")
        raise DumpError("--kvpress-press", f"'{expr}': only kvpress press calls with constant arguments "
                                           f"are allowed, found {ast.dump(node)[:60]}")
    return build(tree.body)


def press_label(expr):
    """A selection name from an expression: 'AdaKVPress(press=SnapKVPress())' -> kvpress_AdaKV_SnapKV."""
    names = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)Press\b", expr)
    return "kvpress_" + "_".join(names or ["press"])


def rows_of(keys, new_keys):
    """keys [Hkv, n, d], new_keys [Hkv, m, d] (rows gathered from keys, in any order) ->
    idx [Hkv, m]: the input position of every returned row."""
    keys = np.ascontiguousarray(keys)
    new_keys = np.ascontiguousarray(new_keys)
    Hkv, n, d = keys.shape
    row = np.dtype((np.void, d * keys.dtype.itemsize))
    idx = np.empty(new_keys.shape[:2], dtype=np.int64)
    for h in range(Hkv):
        pos = {}
        for j, r in enumerate(keys[h].view(row).ravel()):
            pos.setdefault(r.tobytes(), []).append(j)
        for i, r in enumerate(new_keys[h].view(row).ravel()):
            hit = pos.get(r.tobytes())
            if not hit:
                raise DumpError("kvpress", "the press returned a key that is not one of the input keys: it "
                                           "merges or modifies keys, so it is not a token selection")
            idx[h, i] = hit.pop(0)
    return idx


def channels_from_keys(keys, new_keys):
    """Key-channel pruning (ThinK): [Hkv, d] mask of the channels the press did not zero."""
    keys, new_keys = np.asarray(keys), np.asarray(new_keys)
    zeroed = np.all(new_keys == 0, axis=1) & np.any(keys != 0, axis=1)
    return (~zeroed).astype(np.uint8)


def observe(press, module, keys, new_keys):
    """What one compress() call did: {"rows": [Hkv, m] input positions kept, in output order} or
    {"masked": [Hkv, n] uint8 kept mask} (head-wise presses), plus "key_channels" when it zeroed
    key channels instead of dropping tokens."""
    import torch
    k = keys[0].detach().to(torch.float32).cpu().numpy()
    nk = new_keys[0].detach().to(torch.float32).cpu().numpy()
    masked = getattr(module, "masked_key_indices", None)
    if nk.shape == k.shape and masked is not None:  # head-wise presses: keys stay, some are masked
        mask = np.ones(k.shape[:2], dtype=np.uint8)
        _, heads, seq = (t.cpu().numpy() for t in masked)
        mask[heads, seq] = 0
        return {"masked": mask}
    if nk.shape == k.shape and not np.array_equal(nk, k):  # same length, changed keys
        ch = channels_from_keys(k, nk)
        if np.any(ch == 0) and np.array_equal(np.where(ch[:, None, :] == 1, k, 0), nk):
            return {"rows": np.tile(np.arange(k.shape[1]), (k.shape[0], 1)), "key_channels": ch}
        raise DumpError("kvpress", f"{type(press).__name__} changed the keys without dropping any: not a "
                                   "token selection")
    return {"rows": rows_of(k, nk)}


def leaves_of(press):
    """The presses whose compress() runs: ComposedPress runs each of its presses in order."""
    from kvpress import ComposedPress
    return list(press.presses) if isinstance(press, ComposedPress) else [press]


def compose(n, steps):
    """Kept mask [Hkv, n] and channel mask of a sequence of observe() results on one layer."""
    pos, channels, mask = None, None, None
    for st in steps:
        if "masked" in st:
            mask = st["masked"] if pos is None else None
            if mask is None:
                raise DumpError("kvpress", "a head-wise press after another press is not supported")
            continue
        rows = st["rows"]
        pos = rows if pos is None else np.take_along_axis(pos, rows, axis=1)
        if "key_channels" in st:
            channels = st["key_channels"]
    if mask is None:
        H = pos.shape[0] if pos is not None else 0
        mask = np.zeros((H, n), dtype=np.uint8)
        for h in range(H):
            mask[h, pos[h]] = 1
    return mask, channels


@contextlib.contextmanager
def recording(press):
    """Wraps the compress() of the press (or of each press of a ComposedPress) for the block;
    after it, the yielded dict maps layer -> {"kept": [Hkv, n] uint8, "key_channels": [Hkv, d]
    uint8 or None}."""
    found, steps, lengths = {}, {}, {}
    leaves = leaves_of(press)
    originals = [p.compress for p in leaves]

    def wrap(p, original):
        def compress(module, hidden_states, keys, values, attentions, kwargs):
            if hasattr(module, "masked_key_indices"):
                module.masked_key_indices = None
            before = keys.detach().clone()  # ThinK zeroes channels of the keys in place
            new_keys, new_values = original(module, hidden_states, keys, values, attentions, kwargs)
            layer = int(module.layer_idx)
            lengths.setdefault(layer, keys.shape[2])
            steps.setdefault(layer, []).append(observe(p, module, before, new_keys))
            return new_keys, new_values
        return compress

    for p, original in zip(leaves, originals):
        p.compress = wrap(p, original)
    try:
        yield found
        for layer, st in steps.items():
            kept, channels = compose(lengths[layer], st)
            found[layer] = {"kept": kept, "key_channels": channels}
    finally:
        for p, original in zip(leaves, originals):
            p.compress = original


def set_ratio_where_possible(press, ratio):
    """Sets the compression ratio of every token press in the tree; False if none takes one."""
    ok = False
    for p in leaves_of(press):
        try:
            p.compression_ratio = ratio
            ok = True
        except AttributeError:  # ThinK: key channels, its ratio is in the expression
            pass
    return ok


def needs_attention_weights(press):
    """Presses that read the attention matrix (eager attention) somewhere in their tree."""
    from kvpress import ObservedAttentionPress
    stack = [press]
    while stack:
        p = stack.pop()
        if isinstance(p, ObservedAttentionPress):
            return True
        stack.extend(v for v in vars(p).values() if hasattr(v, "compress"))
    return False
