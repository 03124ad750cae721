"""GGUF model files (llama.cpp's format, e.g. SmolLM2-135M-Instruct.Q4_1.gguf) for the Hugging
Face backend.

transformers' own GGUF loader (`from_pretrained(folder, gguf_file=...)`, which uses the `gguf`
package) dequantizes the tensors to float32 and maps the architecture to its model class. That
costs about 15 s for the model and 10 s for the tokenizer on 2 cores, so the result is cached as
an ordinary Hugging Face folder keyed by the file's sha256 (model and tokenizer separately: the
tokenizer is needed before any length check, the weights only after):

    <cache>/gguf/<sha256>/tokenizer/   tokenizer.json + tokenizer_config.json (+ chat template)
    <cache>/gguf/<sha256>/model/       config.json + model.safetensors (float32, dequantized)

<cache> is kvsim's cache folder ($KVSIM_CACHE_DIR, else $XDG_CACHE_HOME/kvsim, else
~/.cache/kvsim), shared with the replay's value-norm cache. Each entry is written into a private
temporary folder and renamed into place, so concurrent or interrupted runs never see half of one.

The tokenizer is rebuilt from the GGUF's own fields rather than taken as transformers converts it:
transformers 5.2 labels SmolLM2's byte-level BPE a CodeLlamaTokenizer, prepends BOS although the
file says tokenizer.ggml.add_bos_token = false, takes <|im_start|> as EOS, and its saved form
reloads as a different tokenizer. kvsim keeps the converted BPE model (tokenizers' JSON) and sets
BOS/EOS/UNK/PAD, BOS insertion and the chat template from the file.
"""
import hashlib
import json
import os
import shutil
import sys
import tempfile

from kvsim.dump.errors import DumpError

MAGIC = b"GGUF"
CACHE_LAYOUT = 1  # bump when what is cached changes; old entries are then ignored
MISSING_GGUF = ("reading GGUF files needs the 'gguf' package (it is in tools/requirements.txt; "
                "bash tools/install-deps.sh installs it into .venv)")


def is_gguf(path):
    """A regular file that starts with the GGUF magic (or is named *.gguf)."""
    if not os.path.isfile(path):
        return False
    if path.endswith(".gguf"):
        return True
    try:
        with open(path, "rb") as f:
            return f.read(4) == MAGIC
    except OSError:
        return False


def file_sha256(path, chunk=1 << 22):
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(chunk), b""):
                h.update(block)
    except OSError as e:
        raise DumpError(path, f"cannot read: {e.strerror}")
    return h.hexdigest()


def cache_root():
    """kvsim's cache folder, by the same rule as the C++ value-norm cache."""
    if os.environ.get("KVSIM_CACHE_DIR"):
        return os.environ["KVSIM_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "kvsim")


class GGUFHeader:
    """The metadata kvsim needs from a GGUF file (no tensor is read)."""

    def __init__(self, path):
        try:
            import gguf
        except ImportError:
            raise DumpError(path, MISSING_GGUF)
        try:
            reader = gguf.GGUFReader(path, "r")
        except Exception as e:  # the reader raises ValueError, struct.error, IndexError...
            raise DumpError(path, f"not a readable GGUF file: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
        fields = reader.fields

        def value(key, default=None):
            f = fields.get(key)
            if f is None:
                return default
            try:
                return f.contents()
            except Exception:
                return default

        self.path = path
        self.architecture = value("general.architecture")
        if not isinstance(self.architecture, str):
            raise DumpError(path, "general.architecture: missing; not a model GGUF file")
        self.file_type = self._file_type_name(gguf, value("general.file_type"), reader)
        arch = self.architecture
        self.context_length = value(f"{arch}.context_length")
        self.add_bos = bool(value("tokenizer.ggml.add_bos_token", False))
        self.special = {key: value(f"tokenizer.ggml.{key}_token_id")
                        for key in ("bos", "eos", "unknown", "padding")}
        self.chat_template = value("tokenizer.chat_template")

    @staticmethod
    def _file_type_name(gguf, code, reader):
        """'Q4_1' for LlamaFileType.MOSTLY_Q4_1; without the field, the most common tensor type."""
        if code is not None:
            try:
                name = gguf.LlamaFileType(int(code)).name
                return name.replace("MOSTLY_", "").replace("ALL_", "")
            except ValueError:
                pass
        counts = {}
        for t in reader.tensors:
            counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
        return max(counts, key=counts.get) if counts else "unknown"

    @property
    def source_precision(self):
        return f"gguf:{self.file_type}"


def check_architecture(header, transformers):
    """One line for an architecture transformers' GGUF loader cannot map to a model class."""
    try:
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES
    except ImportError:
        raise DumpError(header.path, f"--model: transformers {transformers.__version__} cannot load "
                                     "GGUF files (needs >= 4.41)")
    supported = [a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ("general", "tokenizer")]
    if header.architecture not in supported:
        raise DumpError(header.path, f"--model: GGUF architecture '{header.architecture}' is not "
                                     f"one transformers {transformers.__version__}'s GGUF loader maps "
                                     f"(it maps {', '.join(supported)})")


def _publish(tmp, final):
    """Renames a finished temporary folder into place; a concurrent run that won keeps its own."""
    try:
        os.rename(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not os.path.isdir(final):
            raise


def _quiet_transformers(transformers):
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def save_dequantized(model, out):
    """The dequantized weights as an ordinary float32 Hugging Face folder. Not save_pretrained:
    newer transformers (5.17) mark a GGUF-loaded model as quantized and refuse to serialise it."""
    from safetensors.torch import save_file
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    config = model.config
    if getattr(config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)  # the tie is restored on load
    for attr in ("quantization_config",):
        if hasattr(config, attr):
            delattr(config, attr)
    config.save_pretrained(out)
    save_file(state, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})


class GGUFModel:
    """A GGUF file resolved into cached Hugging Face folders (tokenizer now, model on demand)."""

    def __init__(self, path, note=None):
        self.path = os.path.abspath(path)
        self.note = note or (lambda m: print(f"kvsim-dump: {m}", file=sys.stderr))
        self.header = GGUFHeader(self.path)
        self.sha256 = file_sha256(self.path)
        self.entry = os.path.join(cache_root(), "gguf", f"{self.sha256}-v{CACHE_LAYOUT}")
        self.name = os.path.basename(self.path)

    @property
    def meta(self):
        """Root attributes a trace records about the source model (traces/README.md)."""
        return {"model": self.name, "model_sha256": self.sha256,
                "source_precision": self.header.source_precision}

    def _folder(self, kind, build):
        final = os.path.join(self.entry, kind)
        if os.path.isfile(os.path.join(final, "kvsim-gguf.json")):
            return final
        try:
            os.makedirs(self.entry, exist_ok=True)
            tmp = tempfile.mkdtemp(prefix=f".{kind}-", dir=self.entry)
        except OSError as e:
            raise DumpError(self.entry, f"cannot write the GGUF conversion cache: {e.strerror} "
                                        "(set KVSIM_CACHE_DIR to a writable folder)")
        try:
            build(tmp)
            with open(os.path.join(tmp, "kvsim-gguf.json"), "w") as f:
                json.dump({"file": self.name, "sha256": self.sha256, "kind": kind,
                           "architecture": self.header.architecture,
                           "source_precision": self.header.source_precision}, f, indent=1)
            _publish(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    def tokenizer_folder(self):
        return self._folder("tokenizer", self._build_tokenizer)

    def model_folder(self):
        return self._folder("model", self._build_model)

    def _gguf_args(self):
        return os.path.dirname(self.path), os.path.basename(self.path)

    def _build_tokenizer(self, out):
        from kvsim.dump.hf_backend import import_transformers
        transformers = import_transformers()
        _quiet_transformers(transformers)
        self.note(f"converting the tokenizer of {self.name} (once; cached by sha256)")
        folder, name = self._gguf_args()
        try:
            converted = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
        except Exception as e:
            raise DumpError(self.path, f"--model: transformers cannot read its tokenizer: "
                                       f"{str(e).splitlines()[0] if str(e) else type(e).__name__}")
        backend = converted.backend_tokenizer
        token = {key: (backend.id_to_token(int(i)) if i is not None else None)
                 for key, i in self.header.special.items()}
        if self.header.add_bos and token["bos"]:
            from tokenizers import processors
            backend.post_processor = processors.TemplateProcessing(
                single=f"{token['bos']} $A", pair=f"{token['bos']} $A {token['bos']} $B",
                special_tokens=[(token["bos"], int(self.header.special["bos"]))])
        else:
            backend.post_processor = None  # the file says: no BOS
        tok = transformers.PreTrainedTokenizerFast(
            tokenizer_object=backend, bos_token=token["bos"], eos_token=token["eos"],
            unk_token=token["unknown"], pad_token=token["padding"] or token["eos"],
            chat_template=self.header.chat_template)
        tok.save_pretrained(out)

    def _build_model(self, out):
        from kvsim.dump.hf_backend import import_transformers
        transformers = import_transformers()
        _quiet_transformers(transformers)
        import torch
        self.note(f"dequantizing {self.name} ({self.header.source_precision}) to float32 "
                  "(once; cached by sha256)")
        folder, name = self._gguf_args()
        quiet = os.environ.get("TQDM_DISABLE")
        os.environ["TQDM_DISABLE"] = "1"  # the loader's own bar ignores transformers' setting
        try:
            from kvsim.dump.hf_backend import dtype_keyword
            model = transformers.AutoModelForCausalLM.from_pretrained(
                folder, gguf_file=name, **{dtype_keyword(transformers): torch.float32})
        except Exception as e:
            raise DumpError(self.path, f"--model: transformers cannot load this GGUF model: "
                                       f"{str(e).splitlines()[0] if str(e) else type(e).__name__}")
        finally:
            if quiet is None:
                os.environ.pop("TQDM_DISABLE", None)
            else:
                os.environ["TQDM_DISABLE"] = quiet
        save_dequantized(model, out)
        # The tokenizer beside the weights makes the folder a complete model for any HF tool.
        tokenizer = self.tokenizer_folder()
        for f in os.listdir(tokenizer):
            if f != "kvsim-gguf.json":
                shutil.copy(os.path.join(tokenizer, f), out)
