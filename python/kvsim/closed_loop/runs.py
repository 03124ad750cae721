"""The closed loop's runs of the model (closed_loop.py): the prompt prefilled once with the full
cache (the snapshot every one-shot run starts from), the continuation fed token by token (teacher
forced on the recorded tokens, or greedy), and the two processes the offline replay can only
simulate: true block-wise prefill (KeyDiff's process, the cache cut back after every block before
the next block's queries exist) and decode-time re-selection every E steps.

Every continuation is fed one token per forward call, the full reference included, so the full
cache and a rule that keeps everything run the same arithmetic and agree to the last bit.
"""
import re

import numpy as np

from kvsim.dump.errors import DumpError
from kvsim.closed_loop.models import BlockOut


def concat(outs):
    """One BlockOut of a list of consecutive ones."""
    L = len(outs[0].hidden)
    return BlockOut(np.concatenate([o.logits for o in outs]),
                    [np.concatenate([o.hidden[l] for o in outs]) for l in range(L)],
                    [np.concatenate([o.attn[l] for o in outs], axis=1) for l in range(L)],
                    [np.concatenate([o.queries[l] for o in outs], axis=1) for l in range(L)])


def head_rows(mask, num_heads, num_kv_heads, what):
    """A kept mask [units, n] as one row per query head: units are query heads, KV heads (repeated
    over their group) or the whole layer (one set)."""
    units = mask.shape[0]
    if units == num_heads:
        return mask
    if units == num_kv_heads:
        return np.repeat(mask, num_heads // num_kv_heads, axis=0)
    if units == 1:
        return np.repeat(mask, num_heads, axis=0)
    raise DumpError(what, f"a kept mask with {units} units fits neither {num_heads} query heads nor "
                          f"{num_kv_heads} KV heads")


class Snapshot:
    """The state after the full-cache prefill of [0, n_c), the logits of its last position and its
    queries ([layers] of [heads, n_c, head_dim]: the decode protocol's view reads them)."""

    def __init__(self, model, prompt_ids):
        self.state = model.new_state()
        out = model.forward(self.state, prompt_ids)
        self.last_logits = out.logits[-1]
        self.queries = out.queries


def apply_kept(model, state, kept_by_layer, n_c, what):
    """One-shot eviction at the compression point: the rule's kept masks [units, n_c] per layer."""
    for layer, mask in kept_by_layer.items():
        state["alive"][layer][:, :n_c] = head_rows(mask, model.num_heads, model.num_kv_heads, what)


def quant_params(canon):
    """quant(...)'s own parameters from its canonical spec (the last occurrence of each: the base's
    spec comes first)."""
    import re
    def last(key):
        found = re.findall(r"[(,]" + key + r"=([^,()]+)", canon)
        if not found:
            raise DumpError("--rules", f"'{canon}': no {key}= in a quant spec")
        return found[-1]
    return dict(scheme=last("scheme"), kbits=int(last("k")), vbits=int(last("v")), group=int(last("group")),
                kaxis=last("kaxis"), vaxis=last("vaxis"), residual=int(last("residual")))


def quantize_kept(model, state, kept_by_layer, n_c, canon):
    """quant(...) (rules doc 2.33): each KV head's kept span [0, n_c) replaced by what the quantized
    cache gives back, from kvsim.quantize with the rule's parameters: the codes the replay
    measures. Runs after apply_kept, while cache slots are still positions. Which positions hold
    codes goes to state["decode_coded"] (per layer, keys and values [Hkv, n_c]): a decode-protocol
    cut keeps them (decode_rows)."""
    import kvsim
    q = quant_params(canon)
    for layer, mask in kept_by_layer.items():
        if mask.shape[0] != model.num_kv_heads:
            raise DumpError("--rules", f"'{canon}': a quantized cache holds one kept set per KV head (gqa=query "
                                       "selections have one per query head)")
        K, V = (np.array(x[:, :n_c], dtype=np.float32) for x in model.kv(state, layer))
        coded = (np.zeros((model.num_kv_heads, n_c), bool), np.zeros((model.num_kv_heads, n_c), bool))
        for g in range(model.num_kv_heads):
            pos = np.flatnonzero(mask[g][:n_c])
            for side, (X, bits, axis) in enumerate(((K, q["kbits"], q["kaxis"]), (V, q["vbits"], q["vaxis"]))):
                r = kvsim.quantize(X[g, pos], bits, axis=axis, scheme=q["scheme"], group=q["group"],
                                   residual=q["residual"])
                X[g, pos] = r["xhat"]
                coded[side][g, pos[:r["quantized_rows"]]] = True  # the first rows in position order
        model.set_span_kv(state, layer, K, V)
        state["decode_coded"] = {**(state.get("decode_coded") or {}), layer: coded}


def zero_pruned(K, channels):
    """ThinK's pruning of keys K [Hkv, n, d] in place: the channels a KV head's mask [Hkv, d] drops."""
    K[~np.broadcast_to(np.asarray(channels, bool)[:, None, :], K.shape)] = 0


def prune_channels(model, state, channels_by_layer, n_c, canon):
    """think(...) (rules doc 2.12): each KV head's pruned key channels ([Hkv, d] masks, True =
    kept) zeroed in the kept span [0, n_c) of the cache; keys from n_c on stay whole, as kvpress
    appends them after compressing. Runs while cache slots are still positions."""
    for layer, ch in channels_by_layer.items():
        if ch is None:
            raise DumpError("--rules", f"'{canon}': the offline replay gave no key channels for layer {layer}")
        K, V = (np.array(x[:, :n_c], dtype=np.float32) for x in model.kv(state, layer))
        zero_pruned(K, ch)
        model.set_span_kv(state, layer, K, V)


def decode_rows(model, state, layer, L, r, canon):
    """What a decode-protocol cut of ThinK or quant(...) does to the running cache (rules doc 1.9),
    from kvsim._decode_cut's answer r: ThinK zeroes the cut's pruned channels of every key the
    unit holds (on top of earlier cuts: the cache already has those zeros); quant writes the rows
    of the tokens this cut quantized for the first time, while a token quantized before keeps its
    codes (state["decode_coded"][layer]: per side, which positions hold codes). One set per KV
    head: a query-mode cut (one per query head) cannot be written into a shared KV cache."""
    if "key_channels" not in r and "quant" not in r:
        return
    if len(r["cached"]) != model.num_kv_heads:
        raise DumpError("--rules", f"'{canon}': its decode cut has {len(r['cached'])} units; a model's cache holds "
                                   f"one key per KV head ({model.num_kv_heads}): use gqa modes with one set per KV head")
    K, V = (np.array(x[:, :L], dtype=np.float32) for x in model.kv(state, layer))
    if "key_channels" in r:
        zero_pruned(K, r["key_channels"])
    else:
        q = r["quant"]
        coded = state.get("decode_coded") or {}
        before = coded.get(layer)
        now = []
        for side, (X, rows, flags) in enumerate(((K, q["k"], q["k_coded"]), (V, q["v"], q["v_coded"]))):
            had = np.zeros_like(flags)
            if before is not None:
                had[:, :before[side].shape[1]] = before[side]
            fresh = flags & ~had
            X[fresh] = rows[fresh]
            now.append(had | flags)
        state["decode_coded"] = {**coded, layer: tuple(now)}  # a new dict: copied states share the old
    model.set_span_kv(state, layer, K, V)


def query_pages(model, spec, budget):
    """state["step_mask"] for a query-aware rule (Quest, rules doc 2.15) in a running model: every
    fed query attends only to the keys the rule picks with that query (its pages) over the keys
    the cache holds, through kvsim._kvsim._query_masks, whose budget counts the tokens of the
    compression point state["step_mask_nc"] (n_c; under the decode protocol the last cut's L, and
    none yet after a full start: dense), as the offline replay's selections count it."""
    import kvsim

    def hook(state, layer, q, pos, K, V):
        n_c = state.get("step_mask_nc")
        if n_c is None:
            return None
        return kvsim._kvsim._query_masks(spec, K, np.ascontiguousarray(q, np.float32), np.asarray(pos), n_c,
                                         str(budget), layer, model.scale, model.num_heads)
    return hook


def teacher_forced(model, state, tokens, after_step=None, first_step=0):
    """Feeds the recorded tokens; after_step(state, step, out) may evict after each one (steps
    counted on from first_step, the tokens fed before). Without it nothing changes the cache
    between tokens, so they go in as one block (one forward pass instead of one per token; the
    same attention, up to float summation order), for every run of a batched state at once."""
    tokens = [int(t) for t in tokens]
    if after_step is None:
        return model.forward(state, [tokens] * state["batch"] if "batch" in state else tokens)
    every = getattr(after_step, "every", None)
    if every:  # the cache changes only every `every` steps: feed the tokens between as one block
        outs, i = [], 0
        while i < len(tokens):
            step = first_step + i
            n = min(len(tokens) - i, every - step % every)
            outs.append(model.forward(state, tokens[i:i + n]))
            after_step(state, step + n - 1, outs[-1])
            i += n
        return concat(outs)
    outs = []
    for i, t in enumerate(tokens):
        out = model.forward(state, [t])
        outs.append(out)
        after_step(state, first_step + i, out)
    return concat(outs)


def greedy(last_logits, n_gen, feed):
    """n_gen greedy tokens for each run from its last logits; feed(tokens) feeds one token per run
    and returns each run's next logits. One (tokens, logits [n_gen, vocab]) per run: row g is the
    distribution the g-th generated token was drawn from."""
    cur = list(last_logits)
    tokens, logits = [[] for _ in cur], [[] for _ in cur]
    for g in range(n_gen):
        for b, c in enumerate(cur):
            logits[b].append(c)
            tokens[b].append(int(np.argmax(c)))
        if g + 1 < n_gen:
            cur = feed([t[-1] for t in tokens])
    return [(t, np.array(lg)) for t, lg in zip(tokens, logits)]


def free_running(model, state, last_logits, n_gen, after_step=None, first_step=0):
    """Generates n_gen tokens greedily from a state whose last position gave `last_logits`;
    after_step as in teacher_forced. Returns (tokens, logits) as greedy()."""
    step = [first_step]

    def feed(token):
        out = model.forward(state, token)
        if after_step:
            after_step(state, step[0], out)
        step[0] += 1
        return [out.logits[-1]]
    return greedy([last_logits], n_gen, feed)[0]


def free_running_batch(model, state, last_logits, n_gen):
    """free_running without eviction between steps for a batched state: one (tokens, logits) per
    run, each run's own greedy token fed as its row of every step."""
    return greedy(last_logits, n_gen, lambda tokens: [o.logits[-1] for o in model.forward(state, [[t] for t in tokens])])


def _alive_candidates(state, layer, group, upto):
    """Per KV head, the alive positions below `upto` (KV-head sets: every query head of a group
    holds the same row)."""
    alive = state["alive"][layer]
    return [np.flatnonzero(alive[g * group, :upto]) for g in range(alive.shape[0] // group)]


def _keep_per_kv_head(model, state, layer, spec, n_keep, upto, select):
    """Cuts every KV head of a layer back to n_keep of its alive positions below `upto`, by the
    rule `spec` run on those keys alone (kvsim.select)."""
    G = model.num_heads // model.num_kv_heads
    cand = _alive_candidates(state, layer, G, upto)
    if all(len(c) <= n_keep for c in cand):
        return
    if len({len(c) for c in cand}) != 1:
        raise DumpError("closed loop", f"layer {layer}: KV heads hold different numbers of tokens")
    K, _ = model.kv(state, layer)
    keys = np.stack([K[g, c] for g, c in enumerate(cand)])
    kept = select(spec, keys, [n_keep], num_heads=model.num_kv_heads)[0]  # [Hkv, m]
    alive = state["alive"][layer]
    for g, c in enumerate(cand):
        alive[g * G:(g + 1) * G, c[~kept[g]]] = False


def blockwise_prefill(model, prompt_ids, n_keep, recent, block, spec_one_shot, select):
    """KeyDiff's real process on the model: the first n_keep - recent tokens, then blocks of
    `block` tokens, the cache cut back to n_keep - recent after each block by the one-shot rule
    on the surviving keys, and the last `recent` tokens kept as they come (the schedule of
    kvsim's simulated keydiff(block=)). Returns (state, logits of the last prompt position)."""
    n_c = len(prompt_ids)
    older, keep = n_c - recent, n_keep - recent
    if keep < 1 and older > 0:
        raise DumpError("--budgets", f"{n_keep} tokens leave none for the block-wise process after {recent} recent ones")
    state = model.new_state()
    bounds = [0, min(max(keep, 0), older)]
    while bounds[-1] < older:
        bounds.append(min(older, bounds[-1] + block))
    if older < n_c:
        bounds.append(n_c)
    last = None
    for a, b in zip(bounds[:-1], bounds[1:]):
        if b <= a:
            continue
        last = model.forward(state, prompt_ids[a:b]).logits[-1]
        if b <= older and b > keep:
            for layer in range(model.num_layers):
                _keep_per_kv_head(model, state, layer, spec_one_shot, keep, b, select)
    return state, last


def kv_kept(model, state, n_c):
    """The surviving prompt positions per layer as KV-head masks [Hkv, n_c]."""
    G = model.num_heads // model.num_kv_heads
    return {l: state["alive"][l][::G, :n_c].copy() for l in range(model.num_layers)}


def decode_reselection(model, spec_one_shot, n_keep, every, select):
    """after_step for decode-time eviction: every `every` fed tokens, each layer's cache (one set
    shared by all heads, as TOVA keeps) is cut back to n_keep by the one-shot rule, scored with
    the current token's own query (kvpress DecodingPress semantics)."""
    def after(state, i, out):
        if (i + 1) % every:
            return
        for layer in range(model.num_layers):
            alive = state["alive"][layer]
            if not (alive == alive[:1]).all():
                raise DumpError("closed loop", f"decode re-selection needs one kept set per layer (layer {layer})")
            cand = np.flatnonzero(alive[0])
            if len(cand) <= n_keep:
                continue
            K, _ = model.kv(state, layer)
            q = out.queries[layer][:, -1:, :]
            kept = select(spec_one_shot, K[:, cand], [n_keep], q=q, q_pos=[len(cand) - 1],
                          attn_scale=model.scale, num_heads=model.num_heads)[0]
            rows = head_rows(kept, model.num_heads, model.num_kv_heads, spec_one_shot)
            alive[:, cand] = rows
    return after


def decode_protocol(model, spec, budget, every, window, prompt_queries, n_c, cut, rope, o_projs, append_only=False,
                    plan=None, future=None, steps_evict=False):
    """after_step for the decode protocol (rules doc 1.9) in a running model: after every `every`
    fed tokens, each layer's cache is cut back to `budget` by the rule through the engine's own
    compression (cut = kvsim._kvsim._decode_cut: the compacted view the offline replay builds), from
    the keys, values and queries this run computed itself. The queries of the tokens fed since n_c
    are kept in the state (state["decode_q"], new lists per step: copied states do not share them);
    the rule's GQA mode once it cut, in state["decode_mode"]. Steps count fed tokens from n_c, so a
    cut falls at L = n_c + k * every, as offline. rope: the trace's RoPE fields (rope_theta,
    rope_style, rope_scaling, rotary_dim) for the rules that undo it; o_projs: each layer's W_o
    (CriticalKV's projected value norms). append_only: nothing cached
    leaves; the tokens fed since the last cut stay where the cut kept them (admission).
    plan: a cross-layer rule's allocation at n_c ({layer: kept tokens per unit}, _decode_plan of
    the trace: the same full-cache prefill), which each cut scales as offline (Rule::decode_counts).
    future: for the oracles, layer -> the trace's (keys, values, queries) at every position: the
    next interval [L, L + every) the full-cache run computes follows the view, as the offline
    replay's oracle reads it (also in a free-running continuation, whose own tokens differ).
    steps_evict: a step-wise rule whose per-query caches evict (TOVA, H2O step-wise): after.step_mask
    is its state["step_mask"]."""
    H, Hkv = model.num_heads, model.num_kv_heads
    G = H // Hkv

    def call(layer, K, V, q, cached, mode, L):
        return cut(spec, K, V, q, np.arange(K.shape[1]), o_projs[layer], [c.tolist() for c in cached], mode or "kv", L,
                   str(budget), window, model.scale, H, rope, plan=[] if plan is None else [int(x) for x in plan[layer]],
                   n0=n_c)

    def stepwise(state, layer, q, pos, K, V):
        """state["step_mask"] of a step-wise rule that evicts (TOVA, H2O step-wise): each fed query's
        cache is the rule's own mask for it, from the cut that opened its interval (the cache
        before it, state["step_view"][layer]) seen over every query since, as offline; the mask
        is also the cache from then on (alive), so the next cut starts from the last one."""
        view = (state.get("step_view") or {}).get(layer)
        if view is None:
            return None
        cached, mode, L, K0, V0 = view
        T = K.shape[1]
        if K0 is not None:  # the cache's rows as the cut saw them (before its own ThinK pruning)
            K, V = np.concatenate([K0, K[:, L:]], axis=1), np.concatenate([V0, V[:, L:]], axis=1)
        fed = (state.get("decode_q") or [[]] * model.num_layers)[layer]  # queries fed since n_c, this one aside
        q_all = np.concatenate([prompt_queries[layer]] + fed + [q], axis=1)[:, :T]
        r = call(layer, K, V, np.ascontiguousarray(q_all, np.float32), cached, mode, L)
        n = q.shape[1]  # the queries fed in this block are the view's last ones
        m = np.stack([head_rows(r["step_masks"][:, -n + i, :T], H, Hkv, spec) for i in range(n)], axis=1)
        alive = state["alive"][layer].copy()  # from the next block on; this block's attention has its own
        alive[:, :T] &= m[:, -1]
        state["alive"][layer] = alive
        return m

    def interval(layer, K, V, q, L):
        """The cache's rows and queries up to L, then (oracles) the full-cache run's up to E."""
        K, V, q = K[:, :L], V[:, :L], q[:, :L]
        if future is not None:
            fk, fv, fq = future(layer)
            E = min(L + every, fk.shape[1])
            K, V = np.concatenate([K, fk[:, L:E]], axis=1), np.concatenate([V, fv[:, L:E]], axis=1)
            q = np.concatenate([q, fq[:, L:E]], axis=1)
        return (np.ascontiguousarray(x, np.float32) for x in (K, V, q))

    def after(state, i, out):
        hist = state.get("decode_q") or [[] for _ in range(model.num_layers)]
        state["decode_q"] = [h + [out.queries[l]] for l, h in enumerate(hist)]
        if (i + 1) % every:
            return
        L = n_c + i + 1
        for layer in range(model.num_layers):
            mode = state.get("decode_mode")
            alive = state["alive"][layer][:, :L]
            if mode is None and (alive == alive[:1]).all():
                cached = [np.flatnonzero(alive[0])]  # one shared list until the rule first cuts
            else:
                cached = [np.flatnonzero(r) for r in (alive if mode == "query" else alive[::G])]
            K, V = model.kv(state, layer)
            q = np.concatenate([prompt_queries[layer]] + state["decode_q"][layer], axis=1)
            K, V, q = interval(layer, K, V, q, L)
            if K.shape[1] == L and future is not None:
                continue  # an oracle past the recorded positions: no query to cut for
            r = call(layer, K, V, q, cached, mode, L)
            if steps_evict:  # the cache before this cut opens the next interval's per-step caches
                view = (cached, mode, L, K[:, :L].copy(), V[:, :L].copy()) if r["cut"] else None
                state["step_view"] = {**(state.get("step_view") or {}), layer: view}
            if not r["cut"]:
                continue
            state["decode_mode"] = r["mode"]
            state["step_mask_nc"] = L  # a query-aware rule's budget now counts the L tokens seen
            mask = np.zeros((len(r["cached"]), L), bool)
            for u, c in enumerate(r["cached"]):
                mask[u, c] = True
            first = L - every if append_only else 0
            state["alive"][layer][:, first:L] = head_rows(mask, H, Hkv, spec)[:, first:L]
            decode_rows(model, state, layer, L, r, spec)
    after.every = every
    after.step_mask = stepwise
    return after
