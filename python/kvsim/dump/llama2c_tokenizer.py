"""The llama2.c tokenizer (tokenizer.bin) with llama2.c's sentencepiece-style encode.

tokenizer.bin: int32 max_token_length, then per token: float32 score, int32 byte length, bytes.
encode() follows llama2.c run.c: optional BOS (1), a dummy-prefix " " token for non-empty text,
one token per UTF-8 code point (byte fallback <0xXX> = byte + 3 when the code point is not in the
vocabulary), then repeatedly merge the adjacent pair whose concatenation has the best score
(leftmost on ties). The merge loop uses a heap instead of llama2.c's quadratic rescans; it makes
exactly the same choices (highest score first, leftmost among equals).
"""
import heapq
import re
import struct

from kvsim.dump.errors import DumpError

BOS_ID = 1
EOS_ID = 2
BYTE_OFFSET = 3
_BYTE_PIECE = re.compile(rb"^<0x([0-9A-Fa-f]{2})>$")


class Llama2cTokenizer:
    def __init__(self, path):
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except OSError as e:
            raise DumpError(path, f"cannot read tokenizer: {e.strerror}")
        if len(raw) < 4:
            raise DumpError(path, "tokenizer file too short for max_token_length")
        self.path = path
        self.max_token_length = struct.unpack_from("<i", raw, 0)[0]
        pieces, scores = [], []
        off = 4
        while off < len(raw):
            if off + 8 > len(raw):
                raise DumpError(path, f"token {len(pieces)}: truncated score/length")
            score, n = struct.unpack_from("<fi", raw, off)
            off += 8
            if n < 0 or off + n > len(raw):
                raise DumpError(path, f"token {len(pieces)}: bad length {n}")
            pieces.append(raw[off:off + n])
            scores.append(score)
            off += n
        self.pieces = pieces
        self.scores = scores
        self.vocab_size = len(pieces)
        # llama2.c looks strings up with bsearch over a sorted copy; first id wins here on duplicates.
        self.lookup = {}
        for i, p in enumerate(pieces):
            self.lookup.setdefault(p, i)
        self.bos_id = BOS_ID
        self.eos_id = EOS_ID

    def check_vocab_size(self, vocab_size):
        if vocab_size != self.vocab_size:
            raise DumpError(self.path, f"vocab_size: tokenizer has {self.vocab_size} tokens, "
                                       f"checkpoint says {vocab_size}")

    def encode(self, text, bos=False, eos=False, continuation=False):
        """Token ids of text (str), as llama2.c's encode(t, text, bos, eos) returns them.
        continuation=True leaves out the dummy-prefix space: the text continues earlier text."""
        ids = [BOS_ID] if bos else []
        data = text.encode("utf-8")
        symbols = []
        if data and not continuation:
            dummy = self.lookup.get(b" ")
            if dummy is None:
                raise DumpError(self.path, "vocabulary has no ' ' token for the dummy prefix")
            symbols.append(dummy)
        for ch in text:
            cp = ch.encode("utf-8")
            tok = self.lookup.get(cp)
            if tok is not None:
                symbols.append(tok)
            else:
                symbols.extend(b + BYTE_OFFSET for b in cp)
        ids.extend(self._merge(symbols))
        if eos:
            ids.append(EOS_ID)
        return ids

    def _merge(self, symbols):
        n = len(symbols)
        if n < 2:
            return list(symbols)
        tok = list(symbols)
        nxt = list(range(1, n)) + [-1]
        prv = [-1] + list(range(n - 1))
        alive = [True] * n
        heap = []

        def push(i):
            j = nxt[i]
            if j < 0:
                return
            merged = self.lookup.get(self.pieces[tok[i]] + self.pieces[tok[j]])
            if merged is not None:
                # Symbols keep their original index, so the index orders them left to right.
                heapq.heappush(heap, (-self.scores[merged], i, tok[i], j, tok[j], merged))

        for i in range(n - 1):
            push(i)
        while heap:
            _, i, ti, j, tj, merged = heapq.heappop(heap)
            if not (alive[i] and alive[j] and nxt[i] == j and tok[i] == ti and tok[j] == tj):
                continue  # stale: one side was merged since this pair was pushed
            tok[i] = merged
            alive[j] = False
            nxt[i] = nxt[j]
            if nxt[j] >= 0:
                prv[nxt[j]] = i
            if prv[i] >= 0:
                push(prv[i])
            push(i)
        return [tok[i] for i in range(n) if alive[i]]

    def piece_bytes(self, token, prev_token=None):
        """Bytes llama2.c's decode(prev, token) prints: strips the space after BOS, maps <0xXX>."""
        piece = self.pieces[token]
        if prev_token == BOS_ID and piece.startswith(b" "):
            piece = piece[1:]
        m = _BYTE_PIECE.match(piece)
        if m:
            return bytes([int(m.group(1), 16)])
        return piece

    def decode(self, ids, prev_token=None):
        out = bytearray()
        prev = prev_token
        for t in ids:
            if t == BOS_ID or t == EOS_ID:
                prev = t
                continue
            out += self.piece_bytes(t, prev)
            prev = t
        return out.decode("utf-8", errors="replace")
