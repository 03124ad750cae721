"""Streams trace format v2 into an HDF5 file (architecture.md section 3; traces/README.md).

Tensors arrive in slices (a block of positions of one layer) and are written at once, so the
dumper holds at most one block in memory. The file is written as "<out>.<pid>-<random>.partial"
(created exclusively, so two dumps to one path never share it, as kvsim's own writers do) and
renamed by finish(); abort() (or any exception before finish) removes it, so an interrupted dump never leaves
a file that looks complete.

float16 storage checks every slice for overflow; the first slice that would become Inf switches
the whole trace to float32 (slices already written are widened, which is exact) with a warning.
"""
import json
import os
import contextlib
import re
import secrets
import signal
import sys
import threading

import h5py
import numpy as np

from kvsim.dump import float_storage
from kvsim.dump.errors import DumpError

FORMAT = "kvsim-trace"
FORMAT_VERSION = 2  # v2 adds optional soft-cap, rotary_dim and per-layer attributes
CHUNK_POSITIONS = 1024


# Traces renamed into place by this process: an interrupt that lands after the rename says the
# trace is complete and kept instead of "no trace written" (cli.run_command).
committed_outputs = []
# Writers holding a partial file: whatever escapes the tool's own cleanup (an interrupt between
# two statements) is aborted by cli.run_command.
live_writers = set()


@contextlib.contextmanager
def signals_deferred():
    """SIGINT and SIGTERM held back (delivered on exit) while a step that must not be cut in half
    runs: creating and recording the partial file, removing it, renaming it into place."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def pause_at(phase):
    """Test hook for the interrupt path: with KVSIM_DUMP_PAUSE_AT=phase the writer says it reached
    the phase (created, writing, finish, repack, committed) and waits there for a signal."""
    if os.environ.get("KVSIM_DUMP_PAUSE_AT") == phase:
        print(f"kvsim-dump: paused at {phase}", file=sys.stderr, flush=True)
        signal.pause()


class TraceFileWriter:
    def __init__(self, path, meta, seq_len, q_pos, dtype="float32", gzip=False, warn=None):
        """meta: root attributes (format/version are added here). q_pos: sorted stored positions."""
        if dtype not in float_storage.STORAGE_DTYPES:
            raise DumpError("--dtype", f"unknown storage dtype {dtype!r}")
        self.path = path
        self.partial = None
        self.f = None
        self.first_write = True
        self.meta = dict(meta)
        self.S = int(seq_len)
        self.q_pos = np.asarray(q_pos, dtype=np.int64)
        if self.q_pos.size and (np.any(np.diff(self.q_pos) <= 0) or self.q_pos[0] < 0
                                or self.q_pos[-1] >= self.S):
            raise DumpError("--queries", "stored query positions must be sorted, unique and < S")
        self.dtype = dtype
        self.gzip = gzip
        self.warn = warn or (lambda msg: print(f"kvsim-dump: warning: {msg}", file=sys.stderr))
        self.L = int(meta["num_layers"])
        self.H, self.Hkv = int(meta["num_heads"]), int(meta["num_kv_heads"])
        self.hd, self.D = int(meta["head_dim"]), int(meta["hidden_size"])
        self.promoted = False
        self.kv_written = np.zeros(self.L, dtype=np.int64)
        self.q_written = np.zeros(self.L, dtype=np.int64)
        self.o_written = np.zeros(self.L, dtype=np.int64)
        self.has_o_proj = np.zeros(self.L, dtype=bool)
        d = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(d):
            raise DumpError(path, "output folder does not exist")
        try:
            with signals_deferred():  # the partial file exists exactly when a live writer names it
                self.partial = new_partial_file(path)
                live_writers.add(self)
            pause_at("created")
            self.f = h5py.File(self.partial, "w")
        except BaseException as e:
            self.abort()
            if not isinstance(e, OSError):
                raise
            # h5py's text is a paragraph; keep the system's reason when it gives one.
            reason = re.search(r"error message = '([^']+)'", str(e))
            raise DumpError(path, f"cannot write {path}: "
                                  f"{(reason.group(1) if reason else str(e).splitlines()[0]).lower()}")

    # -- tensors -----------------------------------------------------------------------------
    def _dataset(self, layer, name, shape, positions_axis_len):
        grp = self.f.require_group(f"layers/{layer}")
        if name in grp:
            return grp[name]
        kw = {}
        if positions_axis_len is not None:
            # Equal chunks of at most CHUNK_POSITIONS: a last chunk mostly empty would be stored
            # whole (2072 positions in chunks of 1024 took 3072 positions of space).
            n = max(1, positions_axis_len)
            per = -(-n // -(-n // CHUNK_POSITIONS))
            kw["chunks"] = (1, per, shape[2])
        if self.gzip:
            kw.update(compression="gzip", shuffle=True)
            kw.setdefault("chunks", True)
        ds = grp.create_dataset(name, shape=shape,
                                dtype=float_storage.numpy_storage_dtype(self.dtype), **kw)
        if self.dtype == "bfloat16":
            ds.attrs["dtype"] = "bfloat16"
        return ds

    def _store(self, ds, index, x):
        x = np.asarray(x, dtype=np.float32)
        name = ds.name
        if not np.all(np.isfinite(x)):
            raise DumpError(name, "model produced NaN or Inf values")
        if self.dtype == "float16" and not self.promoted and float_storage.float16_overflows(x):
            self._promote_to_float32(name, float(np.abs(x).max()))
            ds = self.f[name]
        ds[index] = float_storage.encode(x, self.dtype)
        if self.first_write:
            self.first_write = False
            pause_at("writing")

    def _promote_to_float32(self, where, peak):
        self.warn(f"{where}: |value| {peak:.6g} overflows float16 (max 65504); "
                  "storing the whole trace as float32 instead")
        self.promoted = True
        self.dtype = "float32"
        for lname in list(self.f.get("layers", {})):
            grp = self.f["layers"][lname]
            for name in list(grp):
                old = grp[name]
                data, chunks = old[()].astype(np.float32), old.chunks
                comp = dict(compression=old.compression, shuffle=old.shuffle) if old.compression else {}
                del grp[name]
                grp.create_dataset(name, data=data, chunks=chunks, **comp)

    def write_kv(self, layer, start, k, v):
        """k, v [num_kv_heads, n, head_dim] for positions start .. start+n-1."""
        n = k.shape[1]
        self._check(layer, "k", k.shape, (self.Hkv, n, self.hd))
        self._check(layer, "v", v.shape, (self.Hkv, n, self.hd))
        if start != self.kv_written[layer] or start + n > self.S:
            raise DumpError(f"layer {layer}", f"k/v positions {start}..{start + n} out of order")
        shape = (self.Hkv, self.S, self.hd)
        self._store(self._dataset(layer, "k", shape, self.S), np.s_[:, start:start + n], k)
        self._store(self._dataset(layer, "v", shape, self.S), np.s_[:, start:start + n], v)
        self.kv_written[layer] += n

    def write_queries(self, layer, first, q, o=None):
        """q (and o) [num_heads, m, head_dim] for stored query indices first .. first+m-1."""
        m, nq = q.shape[1], len(self.q_pos)
        self._check(layer, "q", q.shape, (self.H, m, self.hd))
        if first != self.q_written[layer] or first + m > nq:
            raise DumpError(f"layer {layer}", f"query indices {first}..{first + m} out of order")
        shape = (self.H, nq, self.hd)
        self._store(self._dataset(layer, "q", shape, nq), np.s_[:, first:first + m], q)
        self.q_written[layer] += m
        if o is not None:
            self._check(layer, "o", o.shape, (self.H, m, self.hd))
            self._store(self._dataset(layer, "o", shape, nq), np.s_[:, first:first + m], o)
            self.o_written[layer] += m

    def set_layer_attrs(self, layer, attrs):
        """Attributes of /layers/<layer> (format v2): attention_type, sliding_window, rope_theta,
        rope_scaling."""
        if not 0 <= layer < self.L:
            raise DumpError(f"layer {layer}", f"outside 0..{self.L - 1}")
        grp = self.f.require_group(f"layers/{layer}")
        for key, value in attrs.items():
            grp.attrs[key] = _attr(value)

    def write_selection(self, name, budget, layer, kept, n_c, source, key_channels=None):
        """A stored selection (trace format v2 /selections, traces/README.md): the kept mask
        [num_kv_heads, n_c] of one layer at one budget (e.g. "cr=0.5"), KV-head mode."""
        kept = np.asarray(kept, dtype=np.uint8)
        if kept.shape != (self.Hkv, n_c):
            raise DumpError(f"/selections/{name}", f"kept mask shape {kept.shape}, expected "
                                                   f"({self.Hkv}, {n_c})")
        grp = self.f.require_group(f"selections/{name}")
        for key, value in (("kind", "kept"), ("mode", "kv"), ("n_c", n_c), ("source", source)):
            grp.attrs[key] = _attr(value)
        g = self.f.require_group(f"selections/{name}/{budget}/layers/{layer}")
        g.create_dataset("kept", data=kept)
        if key_channels is not None:
            g.create_dataset("key_channels", data=np.asarray(key_channels, dtype=np.uint8))

    def write_o_proj(self, layer, weight):
        """weight [hidden_size, num_heads*head_dim] (out x in, Hugging Face layout)."""
        self._check(layer, "o_proj", weight.shape, (self.D, self.H * self.hd))
        self._store(self._dataset(layer, "o_proj", weight.shape, None), np.s_[...], weight)
        self.has_o_proj[layer] = True

    def _check(self, layer, name, got, want):
        if not 0 <= layer < self.L:
            raise DumpError(f"layer {layer}", f"outside 0..{self.L - 1}")
        if tuple(got) != tuple(want):
            raise DumpError(f"/layers/{layer}/{name}", f"shape {tuple(got)}, expected {tuple(want)}")

    # -- finishing ---------------------------------------------------------------------------
    def finish(self, input_ids, segment, spans=None, text=None, check=None):
        """Completes the file and renames it into place; check(partial_path), if given, runs on
        the complete file first and raises to refuse it (the partial file is then removed)."""
        ids = np.asarray(input_ids, dtype=np.int32)
        seg = np.asarray(segment, dtype=np.uint8)
        if ids.shape != (self.S,) or seg.shape != (self.S,):
            raise DumpError("/tokens", f"expected {self.S} tokens, got {ids.size} ids and "
                                       f"{seg.size} segments")
        nq = len(self.q_pos)
        for l in range(self.L):
            if self.kv_written[l] != self.S or self.q_written[l] != nq:
                raise DumpError(f"/layers/{l}", f"incomplete: {self.kv_written[l]}/{self.S} "
                                                f"positions of k/v, {self.q_written[l]}/{nq} queries")
            if self.o_written[l] not in (0, nq):
                raise DumpError(f"/layers/{l}/o", "written for only some queries")
        if len(set(self.o_written > 0)) > 1 or len(set(self.has_o_proj)) > 1:
            raise DumpError("/layers", "o or o_proj present in some layers only")
        f = self.f
        f.create_dataset("tokens/input_ids", data=ids)
        f.create_dataset("tokens/segment", data=seg)
        f.create_dataset("q_pos", data=self.q_pos)
        for name, (a, b) in (spans or {}).items():
            f.create_dataset(f"spans/{name}", data=np.array([a, b], dtype=np.int64))
        if text is not None:
            f.create_dataset("text", data=text, dtype=h5py.string_dtype("utf-8"))
        for key, value in self.meta.items():
            f.attrs[key] = _attr(value)
        f.attrs["format"] = FORMAT
        f.attrs["version"] = np.int64(FORMAT_VERSION)
        pause_at("finish")
        f.close()
        if self.promoted:
            _repack(self.partial)  # reclaim the space of the widened float16 datasets
        if check is not None:
            check(self.partial)
        with signals_deferred():
            os.replace(self.partial, self.path)
            self.partial = None
            live_writers.discard(self)
            committed_outputs.append(self.path)
        pause_at("committed")

    def abort(self):
        """Removes the partial file (and a repack's temporary file), whatever phase was cut."""
        with signals_deferred():
            try:
                if self.f is not None:
                    self.f.close()
            except Exception:
                pass
            for p in (self.partial, self.partial and self.partial + ".repack"):
                if p and os.path.exists(p):
                    os.remove(p)
            self.partial = None
            live_writers.discard(self)


def _attr(value):
    if isinstance(value, str):
        return value  # h5py writes Python str as a variable-length UTF-8 string
    if isinstance(value, (bool, np.bool_)):
        return np.int64(value)
    if isinstance(value, (int, np.integer)):
        return np.int64(value)
    if isinstance(value, (float, np.floating)):
        return np.float64(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    raise TypeError(f"attribute value {value!r}")


def new_partial_file(path):
    """A new empty "<path>.<pid>-<random>.partial", created with O_EXCL (never another writer's)."""
    for _ in range(16):
        partial = f"{path}.{os.getpid()}-{secrets.token_hex(4)}.partial"
        try:
            os.close(os.open(partial, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return partial
        except FileExistsError:
            continue
    raise OSError(f"cannot create a unique partial file beside {path}")


def _repack(path):
    tmp = path + ".repack"  # removed with the partial file by abort()
    with h5py.File(path, "r") as src, h5py.File(tmp, "w") as dst:
        pause_at("repack")
        for key in src:
            src.copy(src[key], dst, name=key)
        for key, value in src.attrs.items():
            dst.attrs[key] = value
    os.replace(tmp, path)
