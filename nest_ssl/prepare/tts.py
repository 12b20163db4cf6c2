"""Offline speech synthesis with espeak-ng (the `espeakng-loader` wheel), with word and phone timings.

espeak-ng is driven through its C API with ctypes: synchronous synthesis into a callback that collects the samples
and the WORD / PHONEME events, each with its position in the audio. Every call returns the waveform at espeak's own
rate (22050 Hz) with the words (with their text) and phones (espeak's phoneme mnemonics) as (symbol, start, end) in
seconds of that waveform. The library is a process-wide singleton, so `Synthesizer` is too: make one per process.

A phone's end is the next phone's start; a word spans from its event to the next word's event (or the end of the
speech), trimmed to the phones inside it, so the pause after a word is not counted as part of it. espeak gives a few
unstressed words one event with their neighbour ("in the"): that segment's symbol is then both words.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nest_ssl.errors import UserError

# speak_lib.h
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_INITIALIZE_DONT_EXIT = 0x8000
_EVENT_LIST_TERMINATED = 0
_EVENT_WORD = 1
_EVENT_END = 5
_EVENT_MSG_TERMINATED = 6
_EVENT_PHONEME = 7
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM_RATE = 1
_PARAM_PITCH = 3
_PARAM_RANGE = 4
_PARAM_WORDGAP = 7
RAND_SEED = 1  # espeak-ng's random generator (breath noise), set once per process


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),  # 1-based character position of a word
        ("length", ctypes.c_int),  # characters of a word
        ("audio_position", ctypes.c_int),  # milliseconds into the synthesised audio
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


class TTSError(UserError):
    """espeak-ng is missing or broken, or refused a voice or a text."""


@dataclass(frozen=True)
class Segment:
    symbol: str
    start: float  # seconds
    end: float


@dataclass
class Utterance:
    samples: np.ndarray  # float32 in [-1, 1] at `sample_rate`
    sample_rate: int
    words: list[Segment]
    phones: list[Segment]


_INSTANCE: "Synthesizer | None" = None


def _load_library():
    try:
        import espeakng_loader
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise TTSError(
            "espeak-ng is not installed: `pip install espeakng-loader` (pinned in requirements.txt; `make install` "
            f"puts it in .venv) ({e})") from None
    lib_path, data_path = espeakng_loader.get_library_path(), espeakng_loader.get_data_path()
    if not Path(lib_path).is_file() or not Path(data_path, "phontab").is_file():
        raise TTSError(f"espeakng-loader is broken: no library at {lib_path} or no voice data in {data_path}; "
                       "reinstall it (`pip install --force-reinstall espeakng-loader`)")
    try:
        lib = ctypes.CDLL(lib_path)
    except OSError as e:
        raise TTSError(f"cannot load {lib_path}: {e}; reinstall espeakng-loader") from None
    return lib, data_path


class Synthesizer:
    """The process's espeak-ng. `synth(text, voice, rate, pitch, pitch_range)` -> Utterance."""

    def __new__(cls):
        global _INSTANCE
        if _INSTANCE is None:
            instance = super().__new__(cls)
            instance._init()  # kept only once it worked: a failed start raises again next time, the same way
            _INSTANCE = instance
        return _INSTANCE

    def _init(self) -> None:
        lib, data_path = _load_library()
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p]
        lib.espeak_Synth.restype = ctypes.c_int
        # espeak_Initialize wants the folder that holds espeak-ng-data.
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, str(Path(data_path).parent).encode(),
                                     _INITIALIZE_PHONEME_EVENTS | _INITIALIZE_DONT_EXIT)
        if rate <= 0:
            raise TTSError(f"espeak_Initialize failed (returned {rate}) with the voice data in {data_path}; "
                           "reinstall espeakng-loader")
        self.sample_rate = int(rate)
        # espeak-ng seeds its random generator from the clock at start: the breath noise of the breathy variants
        # (f2, f3, f5, ...) then differs from run to run. A fixed seed makes a process's synthesis reproducible.
        if not hasattr(lib, "espeak_ng_SetRandSeed"):
            raise TTSError(f"{lib._name} has no espeak_ng_SetRandSeed (espeak-ng older than 1.51), so its "
                           "speech would differ from run to run; install the pinned espeakng-loader")
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_ng_SetRandSeed.restype = None
        lib.espeak_ng_SetRandSeed(RAND_SEED)
        self._lib = lib
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[int, int, int, int, str]] = []
        self._callback = _CALLBACK(self._on_synth)  # kept referenced: espeak calls it later
        lib.espeak_SetSynthCallback(self._callback)
        self._voice: str | None = None

    def _on_synth(self, wav, numsamples, events) -> int:
        if numsamples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(numsamples,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            ev = events[i]
            if ev.type == _EVENT_PHONEME:
                self._events.append((ev.type, ev.audio_position, 0, 0, ev.id.string.decode("ascii", "replace")))
            elif ev.type in (_EVENT_WORD, _EVENT_END, _EVENT_MSG_TERMINATED):
                self._events.append((ev.type, ev.audio_position, ev.text_position, ev.length, ""))
            i += 1
        return 0  # go on

    def synth(self, text: str, voice: str = "en-us", rate: int = 175, pitch: int = 50, pitch_range: int = 50,
              word_gap: int = 0) -> Utterance:
        if voice != self._voice:
            if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise TTSError(f"espeak-ng has no voice {voice!r} (e.g. en-us, en-gb-x-rp, en-us+f3)")
            self._voice = voice
        for param, value in ((_PARAM_RATE, rate), (_PARAM_PITCH, pitch), (_PARAM_RANGE, pitch_range),
                             (_PARAM_WORDGAP, word_gap)):
            self._lib.espeak_SetParameter(param, int(value), 0)
        self._chunks, self._events = [], []
        data = text.encode("utf-8") + b"\0"
        err = self._lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if err != 0:
            raise TTSError(f"espeak_Synth failed (error {err}) on {text[:60]!r}")
        samples = (np.concatenate(self._chunks).astype(np.float32) / 32768.0 if self._chunks
                   else np.zeros(0, np.float32))
        words, phones = _segments(text, self._events, len(samples) / self.sample_rate)
        return Utterance(samples=samples, sample_rate=self.sample_rate, words=words, phones=phones)


def _segments(text: str, events, duration: float) -> tuple[list[Segment], list[Segment]]:
    """Word and phone segments from the event list (positions in ms)."""
    phone_marks = [(pos / 1000.0, sym) for typ, pos, _, _, sym in events if typ == _EVENT_PHONEME]
    phones: list[Segment] = []
    for k, (start, sym) in enumerate(phone_marks):
        end = phone_marks[k + 1][0] if k + 1 < len(phone_marks) else duration
        end = min(end, duration)
        # espeak marks a pause as "_" (and some boundaries with zero length): silence, not a phone
        if sym and sym not in ("_", "_:", "_!", "||", "|") and end > start:
            phones.append(Segment(sym, round(start, 4), round(end, 4)))
    word_marks = [(pos / 1000.0, tpos, length) for typ, pos, tpos, length, _ in events if typ == _EVENT_WORD]
    words: list[Segment] = []
    raw = text.encode("utf-8")
    for k, (start, tpos, length) in enumerate(word_marks):
        end = word_marks[k + 1][0] if k + 1 < len(word_marks) else duration
        inside = [p for p in phones if p.start >= start - 1e-6 and p.start < end - 1e-6]
        if not inside:
            continue
        # The text up to the next word event: espeak joins some unstressed words into one event ("in the"), and
        # its length stops at an apostrophe ("farmer's"); such a segment then names every word it holds.
        text_end = word_marks[k + 1][1] - 1 if k + 1 < len(word_marks) else len(raw)
        symbol = " ".join(raw[tpos - 1:max(text_end, tpos - 1 + length)].decode("utf-8", "replace").lower().split())
        words.append(Segment(symbol, round(inside[0].start, 4), round(inside[-1].end, 4)))
    return words, phones
