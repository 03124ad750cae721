"""What the closed loop measures, step by step, against the full-cache run (closed_loop.py)."""
import numpy as np


def log_softmax(logits):
    z = logits - logits.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


NAN = float("nan")


def _row(base, step, position, layer, **values):
    row = dict(base, step=step, position=position, layer=layer, kl_next_token=NAN, token_agreement=NAN, logprob=NAN,
               logprob_full=NAN, hidden_drift=NAN, attn_out_l1=NAN)
    row.update(values)
    return row


def kl_rows(lf, le):
    """KL(full || evicted) of each row of two log-softmax arrays (clipped at 0 against rounding)."""
    return np.maximum((np.exp(lf) * (lf - le)).sum(axis=-1), 0.0)


def teacher_forced_rows(base, full, evicted, targets, o_projs, first_pos):
    """Long-format rows of a teacher-forced continuation: per step (position first_pos + i),
    layer -1 holds the next-token metrics, layers >= 0 the hidden-state relative drift and the
    attention output change ||(o_evicted - o_full) W_o||_1 (the offline replay's layer pert_l1).

    full, evicted: loop_models.BlockOut of the same tokens at the same positions; targets[i]: the
    recorded next token after position first_pos + i (or -1 past the recording)."""
    lf, le = log_softmax(full.logits), log_softmax(evicted.logits)
    kl, agree = kl_rows(lf, le), lf.argmax(-1) == le.argmax(-1)
    rows = []
    for i, t in enumerate(targets):
        rows.append(_row(base, i, first_pos + i, -1, kl_next_token=float(kl[i]), token_agreement=int(agree[i]),
                         logprob=float(le[i, t]) if t >= 0 else NAN, logprob_full=float(lf[i, t]) if t >= 0 else NAN))
    for l in range(len(full.hidden)):
        hf, he = full.hidden[l], evicted.hidden[l]
        drift = np.linalg.norm(he - hf, axis=-1) / np.maximum(np.linalg.norm(hf, axis=-1), 1e-30)
        H, n, d = full.attn[l].shape
        delta = (evicted.attn[l].astype(np.float64) - full.attn[l]).transpose(1, 0, 2).reshape(n, H * d)
        l1 = np.abs(delta @ np.asarray(o_projs[l], dtype=np.float64).T).sum(axis=-1)
        for i in range(n):
            rows.append(_row(base, i, first_pos + i, l, hidden_drift=float(drift[i]), attn_out_l1=float(l1[i])))
    return rows


def free_rows(base, full_tokens, full_logits, tokens, logits, first_pos):
    """Rows of a free-running continuation (layer -1 only): KL between the two runs' next-token
    distributions at the same step, and whether the greedy tokens agree."""
    kl = kl_rows(log_softmax(full_logits), log_softmax(logits))
    return [_row(base, g, first_pos + g, -1, kl_next_token=float(kl[g]), token_agreement=int(tokens[g] == full_tokens[g]))
            for g in range(len(tokens))]


def spearman(x, y):
    """Rank correlation (average ranks for ties); NaN with fewer than 3 points or a constant side."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < 3:
        return float("nan")

    def ranks(a):
        order = np.argsort(a, kind="mergesort")
        r = np.empty(len(a))
        r[order] = np.arange(len(a), dtype=float)
        for v in np.unique(a):  # ties share their average rank
            idx = a == v
            r[idx] = r[idx].mean()
        return r
    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])
