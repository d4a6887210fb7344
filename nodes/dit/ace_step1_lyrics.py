"""ACE-Step 1.0's lyric tokens (the release's "VoiceBpe" tokenizer as ComfyUI's TextEncodeAceStepAudio applies
it): token 261 first; per line of the lyrics, an empty line is token 2, else ``[lang]`` + the cleaned line with
spaces written ``[SPACE]`` through the BPE vocabulary, then token 2. A line starting ``[xx]`` with a known
two-letter code sets its language (the tag is dropped); section lines (``[verse]``, ``[chorus]``…) are
English; other lines are English.

ComfyUI's prompt-weight syntax applies to the lyrics too (its tokenizer class is the CLIP one): ``(…)`` groups
(``(text:1.2)``; ``\\(`` is a literal bracket; square brackets are plain text) split the lyrics into segments,
each tokenized on its own by the recipe above without its leading 261; the weights themselves are dropped.

The vocabulary is ACE-Step's ``vocab.json`` (a ``tokenizers`` file; the model files hold none): it is looked for
in ``<checkpoint stem>.lyrics_tokenizer/`` beside the file, ``ace_lyrics_tokenizer/`` beside it or in
``models/text_encoders/``, else this package's copy of it (``ace_lyrics_vocab.json``, Apache-2.0).

Cleaning (the release's ``multilingual_cleaners``): double quotes dropped, lower case, English integers
written out (``12`` → ``twelve``, thousands separators removed), English abbreviations (``mr.`` → ``mister``…)
and symbols (``&`` → `` and ``…), whitespace collapsed. Not done (documented gaps): decimal, currency and
ordinal numbers, other languages' number words, abbreviations and symbols, Chinese / Korean transliteration and
ComfyUI's Japanese kana romanisation.
"""

from __future__ import annotations

import re
from pathlib import Path

from nodegraph_nodes.diffusion.files import ModelFileError

START, LINE_END = 261, 2
#: two-letter codes a line may start with (``[de]…``)
LANGUAGES = ("en", "de", "fr", "es", "it", "pt", "pl", "tr", "ru", "cs", "nl", "ar", "zh", "ja", "hu", "ko", "hi")
FOLDER = "ace_lyrics_tokenizer"

_ABBREVIATIONS = [(re.compile(rf"\b{a}\.", re.IGNORECASE), b) for a, b in (
    ("mrs", "misess"), ("mr", "mister"), ("dr", "doctor"), ("st", "saint"), ("co", "company"), ("jr", "junior"),
    ("maj", "major"), ("gen", "general"), ("drs", "doctors"), ("rev", "reverend"), ("lt", "lieutenant"),
    ("hon", "honorable"), ("sgt", "sergeant"), ("capt", "captain"), ("esq", "esquire"), ("ltd", "limited"),
    ("col", "colonel"), ("ft", "fort"))]
_SYMBOLS = (("&", " and "), ("@", " at "), ("%", " percent "), ("#", " hash "), ("$", " dollar "),
            ("£", " pound "), ("°", " degree "))
_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
         "seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10 ** 12, "trillion"), (10 ** 9, "billion"), (10 ** 6, "million"), (1000, "thousand"))


def number_words(n: int) -> str:
    """English cardinal words (``num2words`` style: ``one hundred and five``, hyphenated tens)."""
    def below_thousand(x: int) -> str:
        words = []
        if x >= 100:
            words.append(f"{_ONES[x // 100]} hundred")
            x %= 100
            if x:
                words.append("and")
        if x >= 20:
            words.append(_TENS[x // 10] + (f"-{_ONES[x % 10]}" if x % 10 else ""))
        elif x or not words:
            words.append(_ONES[x])
        return " ".join(words)

    if n < 1000:
        return below_thousand(n)
    parts = []
    for value, name in _SCALES:
        if n >= value:
            parts.append(f"{number_words(n // value)} {name}")
            n %= value
    if 0 < n < 100:  # "one thousand and five"
        return " ".join(parts) + " and " + below_thousand(n)
    return ", ".join(parts + ([below_thousand(n)] if n else []))


def clean(text: str, lang: str) -> str:
    text = text.replace('"', "").lower()
    if lang == "en":
        text = re.sub(r"\b\d{1,3}(,\d{3})+\b", lambda m: m.group(0).replace(",", ""), text)
        text = re.sub(r"[0-9]+", lambda m: number_words(int(m.group(0))), text)
        for regex, word in _ABBREVIATIONS:
            text = regex.sub(word, text)
        for symbol, word in _SYMBOLS:
            text = text.replace(symbol, word).replace("  ", " ")
        text = text.strip()
    return re.sub(r"\s+", " ", text)


class LyricTokenizer:
    def __init__(self, vocab_file: Path):
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(vocab_file))

    def encode_line(self, line: str, lang: str) -> list[int]:
        tag = "zh-cn" if lang == "zh" else lang
        return self.tokenizer.encode(f"[{tag}]{clean(line, lang)}".replace(" ", "[SPACE]")).ids

    def __call__(self, lyrics: str) -> list[int]:
        """ComfyUI's token ids of ``lyrics`` (weight segments, see the module docstring)."""
        ids = [START]
        for segment in weight_segments(lyrics):
            ids += self.tokens(segment)[1:]
        return ids

    def tokens(self, lyrics: str) -> list[int]:
        """The release's recipe for one text (lines, language tags), starting with 261."""
        ids = [START]
        for line in lyrics.split("\n"):
            line = line.strip()
            if not line:
                ids.append(LINE_END)
                continue
            lang = "en"
            if line.startswith("[") and line[3:4] == "]" and line[1:3].lower() in LANGUAGES:
                lang, line = line[1:3].lower(), line[4:]
            if re.match(r"\[.*?\]", line):
                lang = "en"
            ids += self.encode_line(line, lang) + [LINE_END]
        return ids


def _parentheses(text: str) -> list[str]:
    """Top-level pieces: plain runs and whole ``(…)`` groups (an unmatched ``)`` ends nothing)."""
    pieces, current, depth = [], "", 0
    for char in text:
        if char == "(":
            if depth == 0:
                if current:
                    pieces.append(current)
                current = ""
            current += char
            depth += 1
        elif char == ")":
            depth -= 1
            current += char
            if depth == 0:
                pieces.append(current)
                current = ""
        else:
            current += char
    if current:
        pieces.append(current)
    return pieces


def _segments(text: str) -> list[str]:
    out = []
    for piece in _parentheses(text):
        if len(piece) >= 2 and piece[0] == "(" and piece[-1] == ")":
            inner = piece[1:-1]
            colon = inner.rfind(":")
            if colon > 0:
                try:
                    float(inner[colon + 1:])
                    inner = inner[:colon]
                except ValueError:
                    pass
            out += _segments(inner)
        else:
            out.append(piece)
    return out


def weight_segments(text: str) -> list[str]:
    """ComfyUI's prompt-weight segments of ``text`` (weights dropped), empty ones left out."""
    escaped = text.replace("\\(", "\0\1").replace("\\)", "\0\2")
    return [s.replace("\0\1", "(").replace("\0\2", ")") for s in _segments(escaped) if s]


#: ACE-Step's own vocabulary (Apache-2.0, see ace_lyrics_vocab.NOTICE.md), used when the user has none
PACKAGED_VOCAB = Path(__file__).with_name("ace_lyrics_vocab.json")


def find_vocab(models_dir: Path, near: Path, packaged: Path | None = PACKAGED_VOCAB) -> Path:
    """The lyric vocabulary: the user's (beside the checkpoint, or ``models/text_encoders/``) first, else
    the one this package ships (``packaged``)."""
    for folder in (near.with_name(near.stem + ".lyrics_tokenizer"), near.parent / FOLDER,
                   Path(models_dir) / "text_encoders" / FOLDER):
        if (folder / "vocab.json").is_file():
            return folder / "vocab.json"
    if packaged is not None and packaged.is_file():
        return packaged
    raise ModelFileError(f"no ACE-Step lyric tokenizer found for {near.name}: the model files hold none and this "
                         f"engine never downloads. Copy ACE-Step's acestep/models/lyrics_utils/vocab.json into "
                         f"models/text_encoders/{FOLDER}/")
