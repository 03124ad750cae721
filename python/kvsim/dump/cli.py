"""Command line of kvsim-dump: model + prompt -> trace format v2 file."""
import argparse
import os
import re
import sys
import time

import numpy as np

from kvsim.dump import VERSION
from kvsim.dump.errors import DumpError
from kvsim.dump.questions import (check_question_options, follow_up_template, plan_continuation, read_lines,
                                  read_questions)
from kvsim.dump.float_storage import STORAGE_DTYPES
from kvsim.dump.prompts import (DEFAULT_NEEDLE, DEFAULT_QUESTION, GENERATED, apply_chat, build_ids,
                      build_longbench, build_niah, build_plain, parse_token_ids, truncate_context)
from kvsim.dump.recorder import Recorder
from kvsim.dump.trace_file import TraceFileWriter
from kvsim.dump.trace_size import DEFAULT_QUERY_WINDOW, DEFAULT_TARGET_MB, choose_storage, trace_bytes
from kvsim.dump.progress import Progress

DEFAULT_GENERATE = 16
# Options that only one prompt kind reads: (dest, flag, the --source options that use it).
PROMPT_KIND_OPTIONS = (
    ("niah_dir", "--niah-dir", ("niah",)), ("niah_length", "--niah-length", ("niah",)),
    ("niah_depth", "--niah-depth", ("niah",)), ("needle", "--needle", ("niah",)), ("needles", "--needles", ("niah",)),
    ("record", "--record", ("longbench",)), ("max_context", "--max-context", ("longbench",)),
    ("longbench_template", "--longbench-template", ("longbench",)),
    ("compression_ratio", "--compression-ratio", ("kvpress_press",)),
    ("kvpress_point", "--kvpress-point", ("kvpress_press",)),
    ("system", "--system", ("chat",)),
)


def warn(msg):
    print(f"kvsim-dump: warning: {msg}", file=sys.stderr)


def parse_layers(spec, num_layers, full_attention=None):
    """"0-3,5" -> [0, 1, 2, 3, 5]; None -> all layers; "full-attention" -> full_attention (the
    layers whose attention sees every earlier position)."""
    if spec is None:
        return list(range(num_layers))
    if spec == "full-attention":
        if not full_attention:
            raise DumpError("--layers", "full-attention: this model has no layer that attends to "
                                        "every earlier position of this prompt")
        return list(full_attention)
    out = set()
    for part in spec.split(","):
        part = part.strip()
        try:
            if "-" in part:
                a, b = (int(x) for x in part.split("-", 1))
            else:
                a = b = int(part)
        except ValueError:
            raise DumpError("--layers", f"'{part}' is not a layer or a range a-b")
        if a > b or a < 0 or b >= num_layers:
            raise DumpError("--layers", f"'{part}' is outside 0..{num_layers - 1}")
        out.update(range(a, b + 1))
    return sorted(out)


def query_positions(spec, context_end, seq_len):
    """all -> every position; window:W -> the W positions before the end of the context and
    everything after (question and generated), which covers the observation window of both
    compression points (end of context, and prefill_len)."""
    if spec == "all":
        return np.arange(seq_len, dtype=np.int64)
    if spec.startswith("window:"):
        try:
            w = int(spec.split(":", 1)[1])
        except ValueError:
            w = -1
        if w < 0:
            raise DumpError("--queries", f"'{spec}': W must be a non-negative integer")
        return np.arange(max(0, context_end - w), seq_len, dtype=np.int64)
    raise DumpError("--queries", f"'{spec}': expected 'all', 'window:W' or 'auto'")


def build_parser():
    p = argparse.ArgumentParser(
        prog="kvsim-dump",
        description="Record an attention trace (kvsim trace format v2, HDF5) from a language model: "
                    "post-RoPE queries, keys and values of every layer, o_proj and the attention "
                    "output. See traces/README.md.")
    p.add_argument("--model", required=True,
                   help="llama2.c checkpoint (.bin, or a folder with one .bin + tokenizer.bin), a "
                        "saved Hugging Face model folder (config.json + weights; or a hub name "
                        "already in the local cache), or a GGUF file (.gguf: dequantized through "
                        "transformers once and cached by sha256; tokenizer and chat template "
                        "from the file)")
    p.add_argument("--backend", choices=("auto", "llama2c", "hf"), default="auto",
                   help="auto: llama2c for .bin checkpoints, hf otherwise")
    p.add_argument("--tokenizer", help="llama2.c tokenizer.bin (default: beside the checkpoint), "
                                       "or a transformers tokenizer folder for Hugging Face and "
                                       "GGUF models (default: the model's own)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", metavar="FILE", help="plain prompt: the file's text is the context")
    src.add_argument("--niah", action="store_true", help="needle-in-a-haystack prompt")
    src.add_argument("--longbench", metavar="FILE", help="LongBench jsonl file")
    src.add_argument("--token-ids", metavar="IDS",
                     help="the prompt as token ids, e.g. 1,403,407 (or @FILE); the context "
                          "segment, exactly as given (no BOS added)")
    p.add_argument("--question", help="question segment (--prompt, --niah)")
    p.add_argument("--chat", action="store_true",
                   help="put the prompt in the model's chat template as the user's message (instruct "
                        "models answer only inside it): the template's head joins the context, its "
                        "tail (end of the user turn, start of the assistant's) the question, and "
                        "the generated tokens are the assistant's answer")
    p.add_argument("--system", metavar="TEXT", help="system message for --chat (default: the "
                                                    "template's own, if any)")
    p.add_argument("--max-tokens", type=int, metavar="N",
                   help="at most N prompt tokens: the context is cut in the middle (its first and "
                        "last halves kept, as LongBench does; NIAH builds a shorter haystack "
                        "instead); the question and the chat template are kept whole")
    p.add_argument("--question-ids", metavar="IDS", help="question segment as token ids "
                                                         "(--token-ids)")
    p.add_argument("--questions", metavar="FILE",
                   help="several questions on one context, one per line: the first is the question "
                        "segment, each later one is fed after the previous answer; every answer is "
                        "--answer-tokens greedy tokens; /spans/question_K and /spans/answer_K mark them")
    p.add_argument("--answer-tokens", type=int, default=32, metavar="N",
                   help="--questions: tokens generated per answer (default %(default)s)")
    g = p.add_argument_group("needle in a haystack")
    g.add_argument("--niah-dir", help="folder of *.txt essays for the haystack")
    g.add_argument("--niah-length", type=int, default=2048, help="prompt length in tokens")
    g.add_argument("--niah-depth", type=float, default=0.5, help="needle depth, 0 (start) .. 1 (end)")
    g.add_argument("--needle", default=DEFAULT_NEEDLE, help="needle sentence")
    g.add_argument("--needles", metavar="FILE",
                   help="several needles, one sentence per line, the i-th of k at depth (i+1)/(k+1) "
                        "(spans needle_1 .. needle_k); with --questions, one question per needle")
    g = p.add_argument_group("LongBench")
    g.add_argument("--record", type=int, default=0, help="record index in the jsonl file (0-based)")
    g.add_argument("--max-context", type=int, help="truncate the context segment in the middle to "
                                                   "this many tokens (as LongBench does)")
    g.add_argument("--longbench-template", help="prompt template with {context} and {input}, for "
                                                "datasets without a built-in one")
    p.add_argument("--generate", type=int, metavar="N",
                   help="greedily generate N tokens and record them (segment 2); exactly N, no "
                        f"stop at end-of-sequence. Default 0, except {DEFAULT_GENERATE} for a "
                        "--prompt without --question (else the trace has no evaluation queries)")
    p.add_argument("--out", required=True, help="trace file to write (.h5)")
    p.add_argument("--layers", help="layers to record, e.g. 0-3,5, or full-attention (the layers "
                                    "without a sliding window shorter than the trace); default "
                                    "all; the trace then numbers the stored layers 0..n-1")
    p.add_argument("--dtype", choices=("auto",) + STORAGE_DTYPES, default="auto",
                   help="storage dtype of the trace (the model computes in --torch-dtype); "
                        "float16 falls back to float32 on overflow. "
                        "auto: float32 unless the trace would exceed --max-size-mb, then float16")
    p.add_argument("--torch-dtype", choices=STORAGE_DTYPES, help="HF backend compute dtype "
                                                                 "(default float32)")
    p.add_argument("--device", help="HF backend device: cpu, cuda, cuda:N (default cuda if "
                                    "available); the trace's layout is the same on every device")
    p.add_argument("--attn-implementation", default="sdpa",
                   help="HF attention implementation to load and wrap (sdpa, eager, "
                        "flash_attention_2, ...)")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--queries", default="auto",
                   help="stored query positions: all, or window:W (W positions before the end "
                        "of the context, then the question and generated tokens; enough for the "
                        "default rules, analyze and both compression points, not for h2o, "
                        "expected, chunk, the step-wise rules or kvsim prefill). auto: all unless "
                        f"the trace would exceed --max-size-mb, then window:{DEFAULT_QUERY_WINDOW}")
    o = p.add_mutually_exclusive_group()
    o.add_argument("--no-o", dest="with_o", action="store_false", default=None,
                   help="do not store the attention output o")
    o.add_argument("--with-o", dest="with_o", action="store_true",
                   help="store the attention output o (kvsim validate --check-o reads it). "
                        "Default: stored unless the trace would exceed --max-size-mb")
    p.add_argument("--max-size-mb", type=float, default=DEFAULT_TARGET_MB, metavar="MB",
                   help="size the auto defaults keep the trace under, giving up in turn o, "
                        "32-bit storage and all queries (default %(default)g; options given "
                        "explicitly are never changed)")
    p.add_argument("--max-positions", type=int,
                   help="allow sequences longer than the model was trained for (RoPE is computed, "
                        "so it works, but attention is out of distribution)")
    p.add_argument("--gzip", action="store_true", help="gzip+shuffle compression")
    g = p.add_argument_group("kvpress presses (Hugging Face models)")
    g.add_argument("--kvpress-press", action="append", default=[], metavar="[NAME=]EXPR",
                   help="after the dump, run this kvpress press (e.g. 'AdaKVPress(press=SnapKVPress())') "
                        "on the context and store its kept tokens in the trace as /selections/NAME "
                        "(default NAME kvpress_<classes>); kvsim replay measures it as "
                        "external(name=NAME) at --budgets cr=R. Repeatable")
    g.add_argument("--compression-ratio", default="0.5", metavar="R[,R...]",
                   help="compression ratios for --kvpress-press (default 0.5)")
    g.add_argument("--kvpress-point", choices=("agnostic", "aware"), default="agnostic",
                   help="where the presses compress: end of the context (kvpress's default, and kvsim "
                        "replay's) or end of the prompt")
    p.add_argument("--version", action="version", version=f"kvsim-dump {VERSION}")
    return p


def open_model(args):
    """The model before its weights load: tokenizer, trained positions, vocabulary size, and
    load(torch_dtype, device, attn_implementation) for the weights."""
    from kvsim.dump.llama2c_backend import Llama2cBackend, looks_like_llama2c
    backend = args.backend
    if backend == "auto":
        backend = "llama2c" if looks_like_llama2c(args.model) or args.model.endswith(".bin") else "hf"
    if backend == "llama2c":
        return Llama2cBackend(args.model, args.tokenizer)
    if args.tokenizer and not os.path.isdir(args.tokenizer):
        raise DumpError(args.tokenizer, "--tokenizer: Hugging Face and GGUF models take a "
                                        "transformers tokenizer folder")
    from kvsim.dump.hf_backend import HFSource
    return HFSource(args.model, args.trust_remote_code, args.tokenizer)


def chat_frame(args, tok):
    """([], [], "", "") without --chat, else the template's head and tail around the user's message."""
    if not args.chat:
        return [], [], "", ""
    if args.token_ids:
        raise DumpError("--chat", "needs a text prompt (--prompt, --niah, --longbench); token ids "
                                  "are used exactly as given")
    if not hasattr(tok, "chat_frame"):
        raise DumpError("--chat", "this model's tokenizer has no chat template (llama2.c)")
    return tok.chat_frame(args.system)


def build_prompt(args, tok, vocab_size=None, overhead=0):
    """The prompt (context and question segments) before any chat template; overhead: tokens the
    template will add, which --niah-length and --max-tokens count."""
    if args.question_ids and not args.token_ids:
        raise DumpError("--question-ids", "needs --token-ids (use --question with text prompts)")
    if args.token_ids:
        if args.question:
            raise DumpError("--question", "give the question as --question-ids with --token-ids")
        q = parse_token_ids(args.question_ids, "--question-ids", vocab_size) if args.question_ids else None
        return build_ids(parse_token_ids(args.token_ids, "--token-ids", vocab_size), q), {}
    question = read_questions(args.questions)[0] if args.questions else args.question
    if args.prompt:
        return build_plain(tok, args.prompt, question), {}
    if args.niah:
        if not args.niah_dir:
            raise DumpError("--niah-dir", "needed with --niah (a folder of *.txt essays)")
        length = args.niah_length if args.max_tokens is None else min(args.niah_length, args.max_tokens)
        if length - overhead < 1:
            raise DumpError("--niah-length", f"{length} tokens leave no room once the chat template "
                                             f"takes {overhead}")
        needles = read_lines(args.needles, "--needles") if args.needles else None
        return build_niah(tok, args.niah_dir, length - overhead, args.niah_depth, args.needle,
                          question or DEFAULT_QUESTION, needles), {}
    first = read_questions(args.questions)[0] if args.questions else None
    prompt, dataset, answers = build_longbench(tok, args.longbench, args.record, args.max_context,
                                               args.longbench_template, first)
    return prompt, {"dataset": dataset, "question_template": prompt.question_template}


def check_length(trained, seq_len, max_positions):
    """Before the weights load: the prompt and generation fit the model's trained positions."""
    if trained is None or seq_len <= trained:
        return
    if max_positions is None:
        raise DumpError("--max-positions", f"the prompt and generation need {seq_len} positions "
                        f"but the model was trained on {trained}; pass --max-positions {seq_len} "
                        "to go beyond (attention will be out of distribution)")
    if seq_len > max_positions:
        raise DumpError("--max-positions", f"{seq_len} positions needed, {max_positions} allowed")
    warn(f"{seq_len} positions but the model was trained on {trained}: RoPE still applies, but "
         "the attention is out of distribution")


def check_options(args, parser):
    """Option values that are wrong whatever the model, and options this prompt kind ignores."""
    if args.generate is not None and args.generate < 0:
        raise DumpError("--generate", "must be >= 0")
    if args.max_tokens is not None and args.max_tokens < 1:
        raise DumpError("--max-tokens", "must be >= 1")
    if args.max_size_mb <= 0:
        raise DumpError("--max-size-mb", "must be > 0")
    if args.queries != "auto":
        query_positions(args.queries, 0, 1)  # the spelling, before anything loads
    if args.token_ids and args.max_tokens is not None:
        raise DumpError("--max-tokens", "token ids are used exactly as given; shorten the list")
    for dest, flag, users in PROMPT_KIND_OPTIONS:
        if getattr(args, dest) != parser.get_default(dest) and not any(getattr(args, u) for u in users):
            needs = " or ".join("--" + u.replace("_", "-") for u in users)
            warn(f"{flag} is ignored without {needs}")
    check_question_options(args)
    if args.prompt and args.question is None and args.questions is None and args.generate == 0:
        raise DumpError("--generate", "0 with a --prompt and no --question leaves nothing after the "
                                      "compression point (end of the context), so a replay would "
                                      "have no evaluation queries; add --question or --generate N")


def check_output_path(out, model, tokenizer=None):
    """Before anything is computed: the output is a new or regular file in an existing folder,
    and never one of the model's own files."""
    if os.path.isdir(out):
        raise DumpError(out, "--out: is a folder; give the trace file's path (e.g. trace.h5)")
    if os.path.lexists(out) and not os.path.isfile(out):
        raise DumpError(out, "--out: exists and is not a regular file (device, fifo or socket)")
    d = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(d):
        raise DumpError(out, "--out: the folder does not exist")
    inputs = [model] + ([tokenizer] if tokenizer else [])
    if os.path.isdir(model):
        inputs = [os.path.join(model, f) for f in os.listdir(model)]
    for path in inputs:
        if os.path.exists(out) and os.path.exists(path) and os.path.samefile(out, path):
            raise DumpError(out, "--out: is the model's own file; refusing to overwrite an input")
    if os.path.isdir(model) and os.path.samefile(d, model):
        raise DumpError(out, "--out: is inside the model folder; write the trace elsewhere")
    check_writable(out)


def check_writable(out):
    """The trace is written beside its final name and renamed, so its folder must take a new
    file: probed with one (removed at once), so root on a read-only file system is caught too."""
    import tempfile
    try:
        fd, probe = tempfile.mkstemp(prefix=".kvsim-dump-probe-", dir=os.path.dirname(os.path.abspath(out)))
    except OSError as e:
        raise DumpError(out, f"cannot write {out}: {(e.strerror or str(e)).lower()}")
    os.close(fd)
    os.remove(probe)


def kvpress_jobs(args):
    """[(name, expression, [(ratio value, ratio text)])] of the --kvpress-press options."""
    ratios = []
    for text in args.compression_ratio.split(","):
        text = text.strip()
        try:
            r = float(text)
        except ValueError:
            r = -1.0
        if not 0.0 <= r < 1.0:
            raise DumpError("--compression-ratio", f"'{text}' is not a ratio in [0, 1)")
        ratios.append((r, text))
    jobs = []
    for item in args.kvpress_press:
        m = re.match(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=(?!=)(.*)$", item)
        name, expr = (m.group(1), m.group(2)) if m else (None, item)
        from kvsim.dump.kvpress_bridge import press_label
        jobs.append((name or press_label(expr), expr, ratios))
    names = [j[0] for j in jobs]
    if len(set(names)) != len(names):
        raise DumpError("--kvpress-press", f"two presses share the name {names}; give NAME=EXPR")
    return jobs


def record_presses(args, backend, writer, recorder, prompt):
    """Runs every --kvpress-press at every ratio and stores the kept masks in the trace."""
    jobs = kvpress_jobs(args)
    if not jobs:
        return
    if not hasattr(backend, "run_press"):
        raise DumpError("--kvpress-press", "needs a Hugging Face model (convert llama2.c checkpoints "
                                           "with tools/llama2c-to-hf)")
    import kvpress

    from kvsim.dump.kvpress_bridge import parse_press, set_ratio_where_possible
    n_c = len(prompt.ids) if args.kvpress_point == "aware" else prompt.context_end
    for name, expr, ratios in jobs:
        for ratio, text in ratios:
            press = parse_press(expr)
            if not set_ratio_where_possible(press, ratio):  # ThinK alone: no token is evicted
                if (ratio, text) != ratios[0]:
                    continue
                text = "0"
            print(f"kvsim-dump: kvpress {expr} at compression ratio {text} on {n_c} tokens", file=sys.stderr)
            found = backend.run_press(press, prompt.ids[:n_c])
            source = f"kvpress {kvpress.__version__ if hasattr(kvpress, '__version__') else ''}: {press!r}"
            for layer, got in found.items():
                if recorder.wants(layer):
                    writer.write_selection(name, f"cr={text}", recorder.layer_slot[layer], got["kept"], n_c,
                                           source.strip(), got.get("key_channels"))


def resolve_generate(args):
    """(--generate or its default, a note to print once the dump starts): 16 for a --prompt
    without a question (so that the trace has evaluation queries), else 0."""
    if args.generate is not None:
        return args.generate, None
    if args.prompt and not args.question:
        return DEFAULT_GENERATE, (f"no --question, so {DEFAULT_GENERATE} tokens are generated as "
                                  "the evaluation queries (--generate N to choose)")
    return 0, None


def size_line(meta, layers, S, n_q, storage, with_o_proj=True):
    mb = trace_bytes(meta, layers, S, n_q, storage.dtype, storage.with_o, with_o_proj) / 1e6
    kv = trace_bytes(meta, layers, S, 0, storage.dtype, False, False) / 1e6
    return (f"{mb:.0f} MB ({storage.dtype}: k/v {kv:.0f} MB, {n_q} stored queries"
            f"{' with o' if storage.with_o else ''}, o_proj)")


def run(args, parser=None):
    parser = parser or build_parser()
    t0 = time.monotonic()
    check_options(args, parser)
    check_output_path(args.out, args.model, args.tokenizer)
    if args.kvpress_press:  # fail on a bad expression before the dump, not after it
        from kvsim.dump.kvpress_bridge import parse_press
        for _, expr, _ in kvpress_jobs(args):
            parse_press(expr)
    # Everything about the prompt and its length is settled before the weights load.
    source = open_model(args)
    tok = source.tokenizer
    head, tail, head_text, tail_text = chat_frame(args, tok)
    overhead = len(head) + len(tail)
    prompt, extra = build_prompt(args, tok, getattr(source, "vocab_size", None), overhead)
    if args.max_tokens is not None and not args.niah:
        cut = truncate_context(prompt, args.max_tokens - overhead)
        if cut:
            prompt.text = tok.decode(prompt.ids)
            print(f"kvsim-dump: note: --max-tokens {args.max_tokens}: {cut} context tokens cut in "
                  "the middle", file=sys.stderr)
    if args.chat:
        prompt = apply_chat(prompt, head, tail, head_text, tail_text, getattr(tok, "bos_id", None))
    P = len(prompt.ids)
    if P == 0:
        raise DumpError("prompt", "no tokens")
    N, generate_note = resolve_generate(args)
    forced, question_spans = None, {}
    if args.questions:  # every later question forced after the previous answer (dump/questions.py)
        qs = read_questions(args.questions)
        forced, rel = plan_continuation(tok, qs, follow_up_template(args, extra), args.answer_tokens)
        N, generate_note = len(forced), None
        question_spans = {"question_1": (prompt.context_end, P)}
        question_spans.update({name: (P + a, P + b) for name, (a, b) in rel.items()})
    S = P + N
    check_length(getattr(source, "max_positions", None), S, args.max_positions)
    compute = args.torch_dtype or "float32"
    backend = source.load(compute, args.device, args.attn_implementation)
    full = backend.full_attention_layers(S) if hasattr(backend, "full_attention_layers") else None
    layers = parse_layers(args.layers, backend.meta["num_layers"],
                          full if full is not None else range(backend.meta["num_layers"]))
    if hasattr(backend, "check_layers"):
        backend.check_layers(layers, S)
    storage, made, _ = choose_storage(backend.meta, len(layers), prompt.context_end, S, args.dtype,
                                      args.queries, args.with_o, args.max_size_mb)
    q_pos = query_positions(storage.queries, prompt.context_end, S)
    print(f"kvsim-dump: trace estimate {size_line(backend.meta, len(layers), S, len(q_pos), storage)}"
          + (f"; to stay under {args.max_size_mb:g} MB the defaults chose: {'; '.join(made)}" if made else ""),
          file=sys.stderr)
    meta = dict(backend.meta)
    meta["num_layers"] = len(layers)
    meta["prefill_len"] = P
    if args.chat:
        meta["chat_template"] = 1
    if len(layers) != backend.meta["num_layers"]:
        meta["model_layers"] = ",".join(map(str, layers))  # model index of each stored layer
    writer = TraceFileWriter(args.out, meta, S, q_pos, storage.dtype, args.gzip, warn)  # cli.run_command aborts
    if generate_note:
        print(f"kvsim-dump: note: {generate_note}", file=sys.stderr)
    if N == 0 and prompt.context_end == P:
        warn("no question and no generated tokens: nothing follows the compression point (end of "
             "context), so a replay has no evaluation queries; add --question or --generate")
    try:
        prefill = Progress("kvsim-dump", f"prefill of {P} tokens: layer", len(layers))
        generation = Progress("kvsim-dump", "generated", N)

        def on_layer(slot, start, n):
            if start == 0:
                prefill.update(slot + 1)
                if slot + 1 == len(layers):
                    generation.restart()  # the ETA of the decode steps counts from here
        recorder = Recorder(writer, layers, q_pos, with_o=storage.with_o, on_layer=on_layer)
        print(f"kvsim-dump: {backend.name} backend, {P} prompt tokens, generating {N}, "
              f"{len(q_pos)} stored queries, layers {args.layers or 'all'}", file=sys.stderr)
        generated = backend.run(prompt.ids, N, recorder, lambda i, n: generation.update(i), forced=forced)
        record_presses(args, backend, writer, recorder, prompt)
        # What the attention kernels were really called with (known after the run).
        for key in ("attn_scale", "attn_logit_softcap"):
            writer.meta.pop(key, None)
            if key in backend.meta:
                writer.meta[key] = backend.meta[key]
        spans = dict(prompt.spans)
        if N:
            spans["answer"] = (P, S)
        spans.update(question_spans)
        writer.finish(prompt.ids + generated, prompt.segment + [GENERATED] * N, spans, prompt.text)
    except BaseException:
        writer.abort()
        raise
    size = os.path.getsize(args.out)
    print(f"trace      {args.out}")
    print(f"model      {meta['model']}" + (f" ({meta['source_precision']})" if meta.get("source_precision") else ""))
    print(f"positions  {S} (prompt {P}: context {prompt.context_end}, question "
          f"{P - prompt.context_end}; generated {N})")
    print(f"queries    {len(q_pos)} stored ({storage.queries})")
    print(f"layers     {len(layers)} x {meta['num_heads']} heads ({meta['num_kv_heads']} KV), "
          f"head_dim {meta['head_dim']}")
    print(f"storage    {writer.dtype}{' gzip' if args.gzip else ''}{'' if storage.with_o else ', no o'}, "
          f"{size / 1e6:.2f} MB, {time.monotonic() - t0:.1f} s")
    for name, (a, b) in sorted(spans.items()):
        print(f"span       {name} [{a}, {b})")
    if N:
        print("generated  " + repr(tok.decode(generated)))
    return 0


def interrupt_on_sigterm():
    """SIGTERM (a scheduler's kill, `timeout`) unwinds like Ctrl-C, so the .partial trace is removed."""
    import signal

    def raise_interrupt(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, raise_interrupt)


def run_command(prog, run, args, interrupted, one_trace=False):
    """Runs a tool's run(args): its DumpError as a one-line error (exit 1), SIGINT/SIGTERM as
    `interrupted` (exit 130). Any trace still being written is aborted here, whatever statement
    the signal cut; for a tool writing one trace (one_trace), a trace already renamed into place
    is complete and said to be kept."""
    from kvsim.dump import trace_file
    interrupt_on_sigterm()
    try:
        return run(args)
    except DumpError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        abort_live_writers(trace_file)
        if one_trace and trace_file.committed_outputs:
            kept = ", ".join(trace_file.committed_outputs)
            print(f"{prog}: interrupted after {kept} was written completely (kept)", file=sys.stderr)
        else:
            print(f"{prog}: interrupted; {interrupted}", file=sys.stderr)
        return 130
    finally:
        abort_live_writers(trace_file)


def abort_live_writers(trace_file):
    with trace_file.signals_deferred():
        for writer in list(trace_file.live_writers):
            writer.abort()


def main(argv=None):
    parser = build_parser()
    return run_command("kvsim-dump", lambda a: run(a, parser), parser.parse_args(argv), "no trace written",
                       one_trace=True)
