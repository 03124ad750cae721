"""kvsim-dump's llama2.c backend against an independent loop-based llama2.c implementation, and
its tokenizer against a literal transcription of llama2.c's quadratic encode()."""
import struct
import unittest

import numpy as np

import dump_testutil as tu
from kvsim.dump.llama2c_model import Llama2cModel
from kvsim.dump.llama2c_tokenizer import Llama2cTokenizer


# ---- independent reference: own file parser, one position at a time, float64, complex RoPE ----
class ReferenceLlama:
    def __init__(self, path):
        with open(path, "rb") as f:
            raw = f.read()
        (self.dim, self.hidden, self.L, self.H, self.Hkv, vocab, self.seq_len) = struct.unpack("<7i", raw[:28])
        self.V = abs(vocab)
        data = np.frombuffer(raw, dtype="<f4", offset=28).astype(np.float64)
        hs = self.dim // self.H
        self.hs = hs
        kv = self.Hkv * hs
        pos = 0

        def take(*shape):
            nonlocal pos
            n = int(np.prod(shape))
            out = data[pos:pos + n].reshape(shape)
            pos += n
            return out
        self.emb = take(self.V, self.dim)
        self.rms_att = take(self.L, self.dim)
        self.wq = take(self.L, self.dim, self.dim)
        self.wk = take(self.L, kv, self.dim)
        self.wv = take(self.L, kv, self.dim)
        self.wo = take(self.L, self.dim, self.dim)
        self.rms_ffn = take(self.L, self.dim)
        self.w1 = take(self.L, self.hidden, self.dim)
        self.w2 = take(self.L, self.dim, self.hidden)
        self.w3 = take(self.L, self.hidden, self.dim)
        self.rms_final = take(self.dim)
        take(self.seq_len, hs // 2)
        take(self.seq_len, hs // 2)
        self.wcls = self.emb if vocab > 0 else take(self.V, self.dim)
        self.keys = [[] for _ in range(self.L)]
        self.vals = [[] for _ in range(self.L)]
        self.seen = []  # per position: per layer (q heads, o heads)

    @staticmethod
    def norm(x, w):
        return w * x / np.sqrt(np.dot(x, x) / len(x) + 1e-5)

    def rotate(self, vec, pos):
        # Each consecutive pair is a complex number multiplied by exp(i * pos * freq_j).
        out = np.empty_like(vec)
        for h in range(len(vec) // self.hs):
            for j in range(self.hs // 2):
                z = complex(vec[h * self.hs + 2 * j], vec[h * self.hs + 2 * j + 1])
                z *= np.exp(1j * pos * 10000.0 ** (-(2.0 * j) / self.hs))
                out[h * self.hs + 2 * j], out[h * self.hs + 2 * j + 1] = z.real, z.imag
        return out

    def step(self, token, pos):
        x = self.emb[token].copy()
        record = []
        for l in range(self.L):
            xb = self.norm(x, self.rms_att[l])
            q = self.rotate(self.wq[l] @ xb, pos)
            k = self.rotate(self.wk[l] @ xb, pos)
            self.keys[l].append(k)
            self.vals[l].append(self.wv[l] @ xb)
            att = np.zeros(self.dim)
            for h in range(self.H):
                kvh = h // (self.H // self.Hkv)
                qh = q[h * self.hs:(h + 1) * self.hs]
                scores = np.array([np.dot(qh, kk[kvh * self.hs:(kvh + 1) * self.hs])
                                   for kk in self.keys[l]]) / np.sqrt(self.hs)
                p = np.exp(scores - scores.max())
                p /= p.sum()
                for t, vv in enumerate(self.vals[l]):
                    att[h * self.hs:(h + 1) * self.hs] += p[t] * vv[kvh * self.hs:(kvh + 1) * self.hs]
            record.append((q.copy(), att.copy()))
            x = x + self.wo[l] @ att
            xb = self.norm(x, self.rms_ffn[l])
            a, b = self.w1[l] @ xb, self.w3[l] @ xb
            x = x + self.w2[l] @ (a / (1 + np.exp(-a)) * b)
        self.seen.append(record)
        return self.wcls @ self.norm(x, self.rms_final)


def llama2c_encode_literal(pieces, scores, text, bos):
    """llama2.c run.c encode(), transcribed loop for loop (quadratic)."""
    lookup = {}
    for i, p in enumerate(pieces):
        lookup.setdefault(p, i)
    tokens = [1] if bos else []
    if text:
        tokens.append(lookup[b" "])
    for ch in text:
        b = ch.encode("utf-8")
        if b in lookup:
            tokens.append(lookup[b])
        else:
            tokens.extend(x + 3 for x in b)
    while True:
        best_score, best_id, best_idx = -1e10, -1, -1
        for i in range(len(tokens) - 1):  # llama2.c includes BOS in the pair scan
            cand = lookup.get(pieces[tokens[i]] + pieces[tokens[i + 1]])
            if cand is not None and scores[cand] > best_score:
                best_score, best_id, best_idx = scores[cand], cand, i
        if best_idx == -1:
            break
        tokens[best_idx:best_idx + 2] = [best_id]
    return tokens


class Llama2cBackendTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tok = Llama2cTokenizer(tu.TOKENIZER)
        cls.model = Llama2cModel(tu.CHECKPOINT)

    def test_logits_and_greedy_match_reference(self):
        prompt = self.tok.encode("Once upon a time", bos=True)
        n_new = 24
        seen = {}

        def on_layer(l, start, q, k, v, o):
            for i in range(q.shape[1]):
                seen[(start + i, l)] = (q[:, i].reshape(-1), o[:, i].reshape(-1))

        logits_steps = []
        model = self.model
        model.reset()
        logits = model.forward(prompt, on_layer)
        gen = []
        for _ in range(n_new):
            logits_steps.append(logits)
            gen.append(int(np.argmax(logits)))
            logits = model.forward([gen[-1]], on_layer)

        ref = ReferenceLlama(tu.CHECKPOINT)
        seq = prompt + gen
        for pos, token in enumerate(seq[:-1]):
            ref_logits = ref.step(token, pos)
            if pos >= len(prompt) - 1:
                ours = logits_steps[pos - len(prompt) + 1]
                np.testing.assert_allclose(ours, ref_logits, atol=2e-4, rtol=1e-4)
                self.assertEqual(int(np.argmax(ref_logits)), seq[pos + 1])
        for (pos, l), (q, o) in seen.items():
            if pos < len(ref.seen):
                np.testing.assert_allclose(q, ref.seen[pos][l][0], atol=1e-4, rtol=1e-4)
                np.testing.assert_allclose(o, ref.seen[pos][l][1], atol=1e-4, rtol=1e-4)
        text = self.tok.decode(seq)
        self.assertTrue(text.startswith("Once upon a time"), text)
        # The greedy story is English made of vocabulary words (a broken model gives byte soup).
        self.assertGreater(sum(c.isalpha() or c in " ,.'\n" for c in text) / len(text), 0.95)

    def test_greedy_helper_equals_stepwise_forward(self):
        prompt = self.tok.encode("Lily had a dog", bos=True)
        gen = self.model.greedy(prompt, 8)
        ref = ReferenceLlama(tu.CHECKPOINT)
        seq = list(prompt)
        for pos in range(len(prompt) + 7):
            logits = ref.step(seq[pos], pos)
            if pos >= len(prompt) - 1:
                seq.append(int(np.argmax(logits)))
        self.assertEqual(gen, seq[len(prompt):])

    def test_rope_positions_beyond_training_length(self):
        # RoPE is computed, not tabulated: a position past seq_len rotates like the reference.
        ref = ReferenceLlama(tu.CHECKPOINT)
        from kvsim.dump.llama2c_model import rope_interleaved
        vec = np.random.default_rng(0).standard_normal(64)
        pos = 700
        ours = rope_interleaved(vec.reshape(8, 1, 8).astype(np.float32), [pos]).reshape(-1)
        np.testing.assert_allclose(ours, ref.rotate(vec, pos), atol=1e-5)


class TokenizerTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tok = Llama2cTokenizer(tu.TOKENIZER)

    def test_matches_literal_llama2c_encode(self):
        texts = ["Once upon a time", "Lily and Ben went to the park.", "", "a", "  two  spaces",
                 "Tim's dog said: \"Woof!\"\nThe end.", "naïve café — 東京 🙂", "12345 67890",
                 "The best thing to do in San Francisco is eat a sandwich."]
        for text in texts:
            for bos in (True, False):
                with self.subTest(text=text, bos=bos):
                    self.assertEqual(self.tok.encode(text, bos=bos),
                                     llama2c_encode_literal(self.tok.pieces, self.tok.scores, text, bos))

    def test_round_trip_and_pieces(self):
        for text in ["Once upon a time, there was a girl.", "naïve 東京 🙂 {x}"]:
            ids = self.tok.encode(text, bos=True)
            self.assertEqual(ids[0], 1)
            self.assertEqual(self.tok.decode(ids), text)
        # Without BOS, the dummy-prefix space stays: the pieces spell " " + text.
        ids = self.tok.encode("Once upon a time")
        self.assertEqual(b"".join(self.tok.pieces[i] for i in ids), b" Once upon a time")
        # A continuation piece has no dummy prefix.
        ids = self.tok.encode("Once upon a time", continuation=True)
        self.assertEqual(b"".join(self.tok.pieces[i] for i in ids), b"Once upon a time")

    def test_byte_fallback(self):
        ids = self.tok.encode("東", bos=False)
        raw = "東".encode("utf-8")
        if raw not in self.tok.lookup:
            self.assertEqual(ids[-3:], [b + 3 for b in raw])
        self.assertEqual(self.tok.decode(ids), " 東")


if __name__ == "__main__":
    unittest.main()
