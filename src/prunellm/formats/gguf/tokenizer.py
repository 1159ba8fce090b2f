"""A Hugging Face tokenizer as GGUF tokenizer metadata (tokenizer.ggml.*), the way llama.cpp's
converter writes it, read from the fast tokenizer's own description (`tokenizer.json`).

Two kinds, as llama.cpp knows them:
- "gpt2": byte-level BPE (SmolLM2, Qwen2, Llama 3): tokens in the byte alphabet, token types,
  merges, and the pre-tokenizer's name (`tokenizer.ggml.pre`), which selects llama.cpp's
  split regex. The name is found as llama.cpp's converter finds it: the hash of the token ids
  of a fixed test text, for the tokenizers of the models covered here; else from the split
  regex itself; else "default" with a warning.
- "llama": SentencePiece-style BPE with byte fallback (Gemma), or a Unigram vocabulary: tokens
  spelled with "▁", a score per token (llama.cpp merges the best-scored pair first, so a
  merge-made token scores minus its merge rank, and a Unigram one keeps its own score), token
  types with the <0xXX> byte tokens marked.
Anything else (WordLevel, WordPiece) is refused with one line.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from hashlib import sha256
from typing import Any

from prunellm.errors import PrunellmError

log = logging.getLogger(__name__)

# llama.cpp's token types (gguf.TokenType).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# The text llama.cpp's converter tokenizes to identify a BPE pre-tokenizer (get_vocab_base_pre).
CHECK_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 3 33 "
    "333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
    "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you "
    "sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)
# sha256 of str(token ids of CHECK_TEXT) -> llama.cpp's pre-tokenizer name, for the tokenizers of
# the models this project covers (values from llama.cpp's converter, which lists hundreds).
KNOWN_PRE = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
}
# Split regexes of tokenizer.json -> the same names, for tokenizers whose hash is not listed.
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
KNOWN_SPLITS = {_QWEN2_SPLIT: "qwen2", _LLAMA3_SPLIT: "llama-bpe"}


@dataclass
class GGUFVocab:
    """What the writer stores: model ('gpt2' or 'llama'), tokens, types, and per kind merges or scores."""

    model: str
    tokens: list[str]
    types: list[int]
    merges: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    pre: str | None = None
    special: dict[str, int] = field(default_factory=dict)  # bos, eos, unk, pad -> id
    add_bos: bool = False
    add_eos: bool = False
    add_space_prefix: bool | None = None
    chat_template: str | None = None


def gguf_vocab(tokenizer: Any, n_rows: int | None = None, arch: str | None = None) -> GGUFVocab:
    """The GGUF vocabulary of `tokenizer` for an embedding of n_rows tokens (padded with unused
    [PADi] tokens when the embedding has more rows, as llama.cpp's converter does; None: as is).
    arch: the GGUF architecture, for its quirks (Gemma's runs of spaces)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise PrunellmError("GGUF output needs a fast (tokenizers) tokenizer; this one has none")
    spec = json.loads(backend.to_str())
    model = spec["model"]
    kind = model.get("type")
    byte_level = _has(spec, "ByteLevel")
    if kind == "BPE" and byte_level:
        vocab = _bpe_vocab(tokenizer, spec, model, "gpt2")
        vocab.pre = _pre_name(tokenizer, spec)
    elif kind == "BPE" and model.get("byte_fallback"):
        vocab = _bpe_vocab(tokenizer, spec, model, "llama")
        if arch is not None and arch.startswith("gemma"):
            _gemma_space_runs(vocab)
    elif kind == "Unigram":
        vocab = _unigram_vocab(tokenizer, spec, model)
    else:
        raise PrunellmError(f"GGUF output supports byte-level BPE, SentencePiece-style BPE and Unigram "
                            f"tokenizers; this one is {kind}" + (" without byte fallback" if kind == "BPE" else ""))
    n_rows = len(vocab.tokens) if n_rows is None else n_rows
    if len(vocab.tokens) > n_rows:
        raise PrunellmError(f"the tokenizer has {len(vocab.tokens)} tokens but the embedding only {n_rows} rows")
    for i in range(len(vocab.tokens), n_rows):
        vocab.tokens.append(f"[PAD{i}]")
        vocab.types.append(UNUSED)
        if vocab.scores:
            vocab.scores.append(-1e9)
    _special(tokenizer, vocab)
    return vocab


def _has(spec: dict[str, Any], type_name: str) -> bool:
    """Whether the pre-tokenizer or decoder contains a component of this type."""
    def walk(node: Any) -> bool:
        if isinstance(node, dict):
            return node.get("type") == type_name or any(walk(v) for v in node.values())
        if isinstance(node, list):
            return any(walk(v) for v in node)
        return False
    return walk(spec.get("pre_tokenizer")) or walk(spec.get("decoder"))


def _id_ordered(tokenizer: Any, model: dict[str, Any], spec: dict[str, Any]) -> list[str]:
    vocab = model["vocab"]
    pairs = vocab.items() if isinstance(vocab, dict) else ((piece[0], i) for i, piece in enumerate(vocab))
    by_id = dict((int(i), t) for t, i in pairs)
    for added in spec.get("added_tokens", []):
        by_id[int(added["id"])] = added["content"]
    size = max(by_id) + 1 if by_id else 0
    missing = [i for i in range(size) if i not in by_id]
    if missing:
        raise PrunellmError(f"the tokenizer has no token for id {missing[0]}: cannot write a GGUF vocabulary")
    return [by_id[i] for i in range(size)]


def _types(tokens: list[str], spec: dict[str, Any], unk: str | None) -> list[int]:
    added = {a["content"]: a for a in spec.get("added_tokens", [])}
    types = []
    for i, token in enumerate(tokens):
        if token == f"[PAD{i}]":  # a converter's padding, read back from a GGUF as a token
            types.append(UNUSED)
        elif token in added:
            types.append(CONTROL if added[token].get("special") else USER_DEFINED)
        elif token == unk:
            types.append(UNKNOWN)
        else:
            types.append(NORMAL)
    return types


def _merges(model: dict[str, Any]) -> list[str]:
    return [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]


def _bpe_vocab(tokenizer: Any, spec: dict[str, Any], model: dict[str, Any], kind: str) -> GGUFVocab:
    tokens = _id_ordered(tokenizer, model, spec)
    types = _types(tokens, spec, model.get("unk_token"))
    merges = _merges(model)
    if kind == "gpt2":
        if not merges:  # the gguf package drops an empty array, and llama.cpp refuses a gpt2 vocabulary without it
            raise PrunellmError("a byte-level BPE tokenizer without merges cannot be written to GGUF")
        return GGUFVocab("gpt2", tokens, types, merges=merges)
    # SentencePiece-style: llama.cpp merges the adjacent pair whose join scores best, so a token
    # made by a merge scores minus the merge's rank; one no merge makes (bytes, single characters,
    # specials) is never a merge result and gets the lowest score.
    rank: dict[str, int] = {}
    for i, merge in enumerate(merges):
        rank.setdefault(merge.replace(" ", ""), i)
    scores = [-float(rank[t]) if t in rank else -float(len(merges) + i) for i, t in enumerate(tokens)]
    types = [BYTE if _is_byte_token(t) and ty == NORMAL else ty for t, ty in zip(tokens, types)]
    vocab = GGUFVocab("llama", tokens, types, scores=scores, pre="default")
    vocab.add_space_prefix = _adds_space_prefix(spec)
    return vocab


def _gemma_space_runs(vocab: GGUFVocab) -> None:
    """Gemma's SentencePiece model holds runs of spaces as user-defined pieces spelled with real
    spaces, which llama.cpp matches in the raw text; transformers respells them with "▁" (its
    GGUF reader does the reverse). Written as Gemma's own GGUF files have them."""
    for i, token in enumerate(vocab.tokens):
        if len(token) > 1 and set(token) == {"\u2581"} and vocab.types[i] == NORMAL:
            vocab.tokens[i] = " " * len(token)
            vocab.types[i] = USER_DEFINED


def _unigram_vocab(tokenizer: Any, spec: dict[str, Any], model: dict[str, Any]) -> GGUFVocab:
    pieces = model["vocab"]  # [[piece, score], ...] in id order
    unk_id = model.get("unk_id")
    tokens = _id_ordered(tokenizer, model, spec)
    scores = [float(pieces[i][1]) if i < len(pieces) else 0.0 for i in range(len(tokens))]
    unk = tokens[unk_id] if unk_id is not None else None
    types = [BYTE if _is_byte_token(t) and ty == NORMAL else ty for t, ty in zip(tokens, _types(tokens, spec, unk))]
    vocab = GGUFVocab("llama", tokens, types, scores=scores, pre="default")
    vocab.add_space_prefix = _adds_space_prefix(spec)
    return vocab


def _is_byte_token(token: str) -> bool:
    return len(token) == 6 and token.startswith("<0x") and token.endswith(">")


def _adds_space_prefix(spec: dict[str, Any]) -> bool:
    """Whether the tokenizer puts a "▁" before the text (SentencePiece's add_dummy_prefix)."""
    text = json.dumps([spec.get("normalizer"), spec.get("pre_tokenizer")])
    return '"prepend_scheme": "always"' in text or '"type": "Prepend"' in text or '"add_prefix_space": true' in text


def _pre_name(tokenizer: Any, spec: dict[str, Any]) -> str:
    ids = tokenizer.encode(CHECK_TEXT, add_special_tokens=False)
    digest = sha256(str(ids).encode()).hexdigest()
    if digest in KNOWN_PRE:
        return KNOWN_PRE[digest]
    for split in _splits(spec.get("pre_tokenizer")):
        if split in KNOWN_SPLITS:
            return KNOWN_SPLITS[split]
    log.warning("unknown BPE pre-tokenizer (hash %s): writing 'default'; llama.cpp may split text differently",
                digest[:12])
    return "default"


def _splits(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["pattern"]["Regex"]] if node.get("type") == "Split" and "Regex" in node.get("pattern", {}) else []
        return found + [s for v in node.values() for s in _splits(v)]
    if isinstance(node, list):
        return [s for v in node for s in _splits(v)]
    return []


def _special(tokenizer: Any, vocab: GGUFVocab) -> None:
    """Special token ids, whether encoding adds BOS/EOS (observed, not guessed), chat template."""
    for role in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tokenizer, f"{role}_token_id", None)
        if token_id is not None and 0 <= token_id < len(vocab.tokens):
            vocab.special[role] = int(token_id)
    ids = tokenizer("a")["input_ids"]
    vocab.add_bos = "bos" in vocab.special and len(ids) > 0 and ids[0] == vocab.special["bos"]
    vocab.add_eos = "eos" in vocab.special and len(ids) > 1 and ids[-1] == vocab.special["eos"]
    template = getattr(tokenizer, "chat_template", None)
    vocab.chat_template = template if isinstance(template, str) else None


def write_vocab(writer: Any, vocab: GGUFVocab) -> None:
    """Store `vocab` as tokenizer.ggml.* keys on a gguf.GGUFWriter."""
    writer.add_tokenizer_model(vocab.model)
    if vocab.pre is not None:
        writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    if vocab.scores:
        writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.types)
    if vocab.merges:
        writer.add_token_merges(vocab.merges)
    adders = {"bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id, "unk": writer.add_unk_token_id,
              "pad": writer.add_pad_token_id}
    for role, token_id in vocab.special.items():
        adders[role](token_id)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    if vocab.add_space_prefix is not None:
        writer.add_add_space_prefix(vocab.add_space_prefix)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)
