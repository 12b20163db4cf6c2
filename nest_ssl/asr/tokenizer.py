"""Tokenizers for CTC: SentencePiece (bpe or unigram) trained from transcripts, and characters.

Saved as NeMo saves its ASR tokenizers, one folder each:
- SentencePiece: `tokenizer.model` (the SentencePiece model), `tokenizer.vocab` (SentencePiece's piece/score list)
  and `vocab.txt` (NeMo's rendering of the pieces: `▁word` -> `word`, `piece` -> `##piece`);
- characters: `vocab.txt` only, one character per line (the space included), in id order.

Ids are 0..V-1; the CTC blank is V (the last class), as in NeMo's ConvASRDecoder. A transcript holding a character
the tokenizer cannot spell is an ASRError naming the file and line: silently mapping it to <unk> would train on, and
score against, text nobody wrote.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Iterable, Protocol, Sequence

from nest_ssl.asr.errors import ASRError, import_asr_dependency

KINDS = ("bpe", "unigram", "char")
SPACE = "▁"  # SentencePiece's word-boundary mark


class Tokenizer(Protocol):
    kind: str

    @property
    def vocab_size(self) -> int: ...  # without the blank

    def encode(self, text: str, where: str = "") -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def tokens(self) -> list[str]: ...  # the id -> token table, for the beam-search decoder's token list

    def spell(self, word: str) -> list[str]: ...  # a word's tokens, for the decoder's lexicon


def _oov(text: str, known: set[str], where: str) -> None:
    bad = sorted({c for c in text if c != " " and c not in known})
    if bad:
        place = f"{where}: " if where else ""
        raise ASRError(f"{place}the transcript {text!r} has characters the tokenizer cannot spell: {bad}; "
                       "normalise the transcripts or train the tokenizer on text that contains them")


class CharTokenizer:
    kind = "char"

    def __init__(self, characters: Sequence[str]):
        if len(set(characters)) != len(characters) or not characters:
            raise ASRError(f"character vocabulary {list(characters)} is empty or has duplicates")
        self.characters = list(characters)
        self._index = {c: i for i, c in enumerate(self.characters)}

    @property
    def vocab_size(self) -> int:
        return len(self.characters)

    def encode(self, text: str, where: str = "") -> list[int]:
        _oov(text, set(self.characters), where)
        if " " not in self._index and " " in text:
            raise ASRError(f"{where}: the character vocabulary has no space; retrain it from these transcripts")
        return [self._index[c] for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.characters[i] for i in ids)

    def tokens(self) -> list[str]:
        return ["|" if c == " " else c for c in self.characters]  # flashlight's word separator is "|"

    def spell(self, word: str) -> list[str]:
        return list(word)  # flashlight puts the separator "|" between words as silence

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "vocab.txt").write_text("".join(c + "\n" for c in self.characters), encoding="utf-8")


class SentencePieceTokenizer:
    def __init__(self, model_proto: bytes, kind: str):
        spm = import_asr_dependency("sentencepiece")

        self.kind = kind
        self.model_proto = model_proto
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self._known = self._known_chars()

    def __getstate__(self) -> dict:  # DataLoader workers get a copy: the processor is rebuilt from the model
        return {"model_proto": self.model_proto, "kind": self.kind}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["model_proto"], state["kind"])

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str, where: str = "") -> list[int]:
        _oov(text, self._known, where)
        return list(self.sp.encode(text))

    def _known_chars(self) -> set[str]:
        known = set()
        for i in range(self.sp.get_piece_size()):
            if not (self.sp.is_unknown(i) or self.sp.is_control(i)):
                known.update(c for c in self.sp.id_to_piece(i) if c != SPACE)
        return known

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.decode(list(ids))

    def tokens(self) -> list[str]:
        return [self.sp.id_to_piece(i) for i in range(self.sp.get_piece_size())]

    def spell(self, word: str) -> list[str]:
        return list(self.sp.encode(word, out_type=str))

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "tokenizer.model").write_bytes(self.model_proto)
        pieces = [(self.sp.id_to_piece(i), self.sp.get_score(i)) for i in range(self.sp.get_piece_size())]
        (folder / "tokenizer.vocab").write_text("".join(f"{p}\t{s:g}\n" for p, s in pieces), encoding="utf-8")
        # NeMo's vocab.txt: every piece but <unk>, `▁x` written `x`, a word-internal piece `##x`
        lines = []
        for piece, _ in pieces[1:]:
            token = piece[1:] if piece.startswith(SPACE) else f"##{piece}"
            lines.append(token if token else piece[0])
        (folder / "vocab.txt").write_text("".join(t + "\n" for t in lines), encoding="utf-8")


def train_tokenizer(texts: Iterable[str], kind: str, vocab_size: int = 128, required_chars: str = ""):
    """A tokenizer trained on `texts` (already checked and normalised). char: every character seen, sorted.
    `required_chars` are in the vocabulary even where `texts` lack them (SentencePiece's required_chars): a small
    training set may miss a letter that test transcripts or LM words have."""
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ASRError("no transcript to train the tokenizer on (all are empty)")
    if kind == "char":
        return CharTokenizer(sorted({c for t in texts for c in t} | set(required_chars)))
    if kind not in KINDS:
        raise ASRError(f"--type {kind}: choose one of {', '.join(KINDS)}")
    spm = import_asr_dependency("sentencepiece")

    model = io.BytesIO()
    try:
        # NeMo's settings (scripts/tokenizers/process_asr_text_tokenizer.py): no bos/eos/pad, full character coverage
        spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_writer=model, model_type=kind,
                                       vocab_size=vocab_size, character_coverage=1.0, bos_id=-1, eos_id=-1,
                                       unk_id=0, pad_id=-1, hard_vocab_limit=True, num_threads=1,
                                       minloglevel=2, required_chars=required_chars)
    except RuntimeError as err:
        raise ASRError(f"SentencePiece cannot train a {kind} vocabulary of {vocab_size} on these transcripts: "
                       f"{str(err).strip().splitlines()[-1][:200]}; choose a smaller --vocab-size") from None
    return SentencePieceTokenizer(model.getvalue(), kind)


def load_tokenizer(folder: str | Path, kind: str | None = None):
    """The tokenizer saved in `folder` (tokenizer.model -> SentencePiece, else vocab.txt -> characters), or the one
    inside an ASR `.nemo` archive given instead of a folder."""
    folder = Path(folder)
    if folder.is_file() and folder.suffix == ".nemo":
        from nest_ssl.asr.nemo_archive import tokenizer_of_asr_nemo

        return tokenizer_of_asr_nemo(folder)
    if not folder.is_dir():
        raise ASRError(f"tokenizer folder {folder}: does not exist; train one with `nest-ssl finetune --tokenizer-"
                       "type ...` or give the folder that holds tokenizer.model / vocab.txt")
    model = folder / "tokenizer.model"
    if model.is_file():
        return SentencePieceTokenizer(model.read_bytes(), kind or "bpe")
    vocab = folder / "vocab.txt"
    if not vocab.is_file():
        raise ASRError(f"tokenizer folder {folder}: has neither tokenizer.model nor vocab.txt; give a tokenizer folder")
    chars = vocab.read_text(encoding="utf-8").split("\n")[:-1]
    if any(len(c) != 1 for c in chars):
        raise ASRError(f"{vocab}: a character vocabulary has one character per line; found {chars[:5]}...")
    return CharTokenizer(chars)


def save_tokenizer(tok, folder: str | Path) -> Path:
    folder = Path(folder)
    tok.save(folder)
    return folder
