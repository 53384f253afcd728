"""Reading documents from the formats users have, and the embedded default corpus.

Formats: folders (or single files) of plain text (`*.txt`, one document per file), JSON Lines
(`*.jsonl`, one document per line, text in a named field), Parquet (`*.parquet`, a named
column), and a Hugging Face `datasets` folder written by `save_to_disk` (a `Dataset`, or a
`DatasetDict` whose split is chosen by name). Every problem names the file: an empty file,
invalid UTF-8 (with the byte offset), a JSONL line that is not JSON or lacks the field, a Parquet
file or dataset without the column (listing the columns there are), a missing split.

The embedded corpus needs no download: it is the documentation that ships with Python itself,
the docstrings of standard-library modules, read with `ast` from the `.py` sources under
sysconfig's stdlib path (parsing, not importing, so no module runs). The labelled set for
`omnimask eval` asks whether a passage's words are in their written order (`word_order_record`).
The second embedded corpus, `corpus.embedded=chains`, is generated text in a made-up language
whose only grammar is which word may follow which (`chain_successors`); its labelled set asks
whether a passage is written forwards or backwards (`write_chain_data`).
"""

from __future__ import annotations

import ast
import json
import logging
import os
import random
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from omnimask.data import BadSampleError, check_data_path, default_data_dir, generate_once
from omnimask.errors import ConfigError

logger = logging.getLogger(__name__)

PATTERNS = ("*.txt", "*.jsonl", "*.parquet")

#: stdlib modules/packages whose docstrings make the embedded training corpus.
CORPUS_SOURCES = (
    "asyncio", "email", "unittest", "importlib", "multiprocessing", "xml", "http", "logging",
    "json", "concurrent", "urllib", "collections", "argparse", "pathlib", "typing", "inspect",
    "dataclasses", "functools", "itertools", "subprocess", "shutil", "tarfile", "zipfile",
    "datetime", "decimal", "fractions", "statistics", "random", "string", "textwrap", "difflib",
    "pickle", "socket", "ssl", "threading", "queue", "sched", "calendar", "csv", "configparser",
)  # fmt: skip
#: stdlib modules the pretraining corpus leaves out, whose docstrings make the labelled set.
LABELLED_SOURCES = (
    "turtle", "doctest", "ipaddress", "wsgiref", "smtplib", "os", "traceback", "codecs", "xmlrpc",
    "mimetypes", "pdb", "ftplib", "timeit", "tempfile", "ctypes", "optparse", "locale", "graphlib",
    "dbm", "ast", "weakref", "uuid", "re", "pkgutil", "pickletools", "enum", "code", "base64",
    "tokenize", "socketserver", "runpy", "compileall", "cmd", "bdb", "wave", "sqlite3", "gettext",
    "pydoc", "trace", "pstats", "profile", "heapq", "bisect", "contextlib", "copy", "operator",
    "abc", "io", "glob", "fnmatch", "filecmp", "gzip", "bz2", "lzma", "hashlib", "hmac",
    "secrets", "selectors", "signal", "platform", "sysconfig", "warnings", "shlex", "netrc",
    "plistlib", "zoneinfo", "html", "mailbox", "imaplib", "poplib", "quopri",
)  # fmt: skip
#: words per labelled passage (about 60 WordPiece tokens: one row of the demo's 128).
PASSAGE_WORDS = 40
#: labels of the embedded set.
IN_ORDER, SHUFFLED = 0, 1
MIN_DOC_CHARS = 40
#: the embedded corpora (`corpus.embedded`).
EMBEDDED = ("stdlib_docs", "chains", "communities")
#: the made-up language's vocabulary: this many two-syllable words.
CHAIN_WORDS = 64
#: words that may follow each word.
CHAIN_SUCCESSORS = 8
#: words per generated document and per labelled passage (32 tokens with [CLS] and [SEP]).
CHAIN_PASSAGE_WORDS = 30
CHAIN_CORPUS_DOCUMENTS = 12_000
CHAIN_LABELLED_PASSAGES = 800
#: labels of the chains' labelled set.
FORWARDS, BACKWARDS = 0, 1
#: version of the generated chains (bump when the generator changes: a new cache folder).
CHAINS_VERSION = 1
#: `corpus.embedded=communities`: the chain words fall into this many communities of
#: `2 * COMMUNITY_HALF` words; a word's successors lie in its community, half of them in its
#: own half of it.
COMMUNITIES = 4
COMMUNITY_HALF = 8
#: labelled passages of the communities' set: train ones from first halves, test from second.
COMMUNITY_TRAIN_PASSAGES, COMMUNITY_TEST_PASSAGES = 600, 200
COMMUNITIES_VERSION = 1


@dataclass(frozen=True)
class Document:
    source: str  # file (and line) it came from, for error messages
    text: str


def decode_utf8(path: Path, data: bytes, start: int = 0) -> str:
    """`data`, which starts at byte `start` of `path`, as text; invalid UTF-8 raises
    `BadSampleError` naming the file and the byte offset in it."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        offset = start + error.start
        raise BadSampleError(
            path, f"invalid UTF-8 at byte offset {offset} ({error.reason})"
        ) from None


def read_file(path: Path, field: str, skipped: list[str] | None = None) -> list[Document]:
    """The documents of one corpus file (`iter_file`, as a list)."""
    return list(iter_file(path, field, skipped))


def iter_file(path: Path, field: str, skipped: list[str] | None = None) -> Iterator[Document]:
    """The documents of one corpus file, read as they are needed (a JSONL file line by line, a
    Parquet file a batch of rows at a time), so memory does not grow with the file; raises
    `BadSampleError` when it cannot be used. With a `skipped` list, a bad JSONL line is
    logged, listed there and left out instead: the file's other lines still count."""
    if path.suffix == ".parquet":
        yield from _iter_parquet(path, field)
        return
    if path.suffix != ".jsonl":
        data = path.read_bytes()  # one document per file
        if not data.strip():
            raise BadSampleError(path, "empty file (no text)")
        yield Document(str(path), decode_utf8(path, data))
        return
    found, blank = False, True
    with path.open("rb") as file:
        offset = 0
        for number, raw in enumerate(file, start=1):
            start, offset = offset, offset + len(raw)
            if not raw.strip():
                continue
            blank = False
            try:
                documents = _jsonl_document(path, number, decode_utf8(path, raw, start), field)
            except BadSampleError as error:
                if skipped is None:
                    raise
                logger.warning("skipped bad corpus line: %s", error)
                skipped.append(str(error))
                continue
            found |= bool(documents)
            yield from documents
    if blank:
        raise BadSampleError(path, "empty file (no text)")
    if not found:
        raise BadSampleError(path, f"no non-empty {field!r} text in any line")


def _jsonl_document(path: Path, number: int, line: str, field: str) -> list[Document]:
    """Line `number` of a JSONL file as a document ([] if its text is blank)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise BadSampleError(f"{path}:{number}", f"not JSON ({error.msg})") from None
    if not isinstance(record, dict) or not isinstance(record.get(field), str):
        raise BadSampleError(f"{path}:{number}", f"no string field {field!r}")
    text = record[field]
    return [Document(f"{path}:{number}", text)] if text.strip() else []


def _iter_parquet(path: Path, field: str, batch_rows: int = 4096) -> Iterator[Document]:
    """Column `field` of a Parquet file, `batch_rows` rows at a time (`pyarrow.parquet`)."""
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as error:  # pyarrow raises several types for unreadable files
        raise BadSampleError(path, f"not a readable Parquet file ({error})") from None
    names = parquet.schema_arrow.names
    if field not in names:
        raise BadSampleError(path, f"no column {field!r} (columns: {', '.join(names)})")
    row, found = 0, False
    for batch in parquet.iter_batches(batch_size=batch_rows, columns=[field]):
        for value in batch.column(0).to_pylist():
            if isinstance(value, str) and value.strip():
                found = True
                yield Document(f"{path}:row{row}", value)
            row += 1
    if not found:
        raise BadSampleError(path, f"column {field!r} holds no text")


def is_saved_dataset(path: Path) -> bool:
    """Whether `path` is a folder written by `datasets`' `save_to_disk`."""
    return path.is_dir() and any(
        (path / marker).is_file() for marker in ("dataset_dict.json", "state.json")
    )


def iter_saved_dataset(path: Path, field: str, split: str = "train") -> Iterator[Document]:
    """The `field` column of a `save_to_disk` folder (for a `DatasetDict`, of split `split`),
    read with `datasets.load_from_disk`: local Arrow files, memory-mapped, never the Hub, a
    batch of rows at a time."""
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as error:
        raise BadSampleError(path, f"not a readable `datasets` folder ({error})") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise BadSampleError(
                path, f"no split {split!r} (splits: {', '.join(loaded)}); set corpus.split"
            )
        loaded = loaded[split]
    if field not in loaded.column_names:
        columns = ", ".join(loaded.column_names)
        raise BadSampleError(path, f"no column {field!r} (columns: {columns}); set corpus.field")
    row, found = 0, False
    for batch in loaded.select_columns([field]).iter(batch_size=4096):
        for value in batch[field]:
            if not isinstance(value, str):
                raise BadSampleError(
                    f"{path}:row{row}", f"column {field!r} holds {type(value).__name__}, not text"
                )
            if value.strip():
                found = True
                yield Document(f"{path}:row{row}", value)
            row += 1
    if not found:
        raise BadSampleError(path, f"column {field!r} holds no text")


def corpus_files(path: str | os.PathLike[str], split: str = "train") -> list[Path]:
    """The files a corpus is read from (what keys its cached tokenizer): a `datasets` folder's
    files (of the split's folder, for a `DatasetDict`), or the matching text files."""
    root = Path(path)
    if is_saved_dataset(root):
        folder = root / split if (root / "dataset_dict.json").is_file() else root
        return sorted(f for f in (folder if folder.is_dir() else root).rglob("*") if f.is_file())
    return check_data_path(root, PATTERNS)


def read_corpus(
    path: str | os.PathLike[str],
    field: str,
    on_bad: str = "raise",
    split: str = "train",
    skipped: list[str] | None = None,
) -> list[Document]:
    """Every document under `path` as a list (`iter_corpus`): for small corpora and tests."""
    return list(iter_corpus(path, field, on_bad, split, skipped))


def iter_corpus(
    path: str | os.PathLike[str],
    field: str,
    on_bad: str = "raise",
    split: str = "train",
    skipped: list[str] | None = None,
) -> Iterator[Document]:
    """Every document under `path` (a `datasets` folder, or files in sorted order), one at a
    time: the streaming pass that tokenizes a corpus larger than memory. Bad files and JSONL
    lines raise `BadSampleError`, or with `on_bad="skip"` are logged, left out and listed in
    `skipped` (one line is left out, not its whole file; a file that fails part way keeps the
    documents it gave before)."""
    if is_saved_dataset(Path(path)):
        yield from iter_saved_dataset(Path(path), field, split)
        return
    skipped = [] if skipped is None else skipped
    found = False
    for file in check_data_path(path, PATTERNS):
        try:
            for document in iter_file(file, field, skipped if on_bad == "skip" else None):
                found = True
                yield document
        except BadSampleError as error:
            if on_bad == "raise":
                raise
            logger.warning("skipped bad corpus file: %s", error)
            skipped.append(str(error))
    if not found:
        raise BadSampleError(path, "no readable document")


# ---------------------------------------------------------------- embedded corpus
def stdlib_docstrings(module: str) -> Iterator[str]:
    """Docstrings of a stdlib module or package (module, classes, functions), source order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    package = root / module
    files = sorted(package.rglob("*.py")) if package.is_dir() else [root / f"{module}.py"]
    for file in files:
        if "test" in file.relative_to(root).parts[1:-1] or not file.is_file():
            continue
        try:
            tree = ast.parse(file.read_bytes())
        except SyntaxError:
            continue
        nodes = [tree, *ast.walk(tree)]
        for node in nodes:
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= MIN_DOC_CHARS:
                    yield doc


def embedded_dir() -> Path:
    """The embedded data folder, per Python version (the stdlib docs differ between versions)
    and version of the labelled set (v2: word order)."""
    version = f"py{sys.version_info[0]}{sys.version_info[1]}"
    return default_data_dir("text") / f"stdlib-docs-{version}-v2"


def word_order_record(doc: str, index: int, rng: random.Random) -> dict[str, object]:
    """Labelled passage `index`: `PASSAGE_WORDS` consecutive words from a random place in `doc`
    (at least that long), left in order (label 0) or with the words shuffled (label 1); every
    fourth passage is test.

    Why this task: both classes hold the same words with the same frequencies, so any function
    of the bag of tokens (mean-pooled random embeddings, a random encoder whose attention is
    near uniform) scores about chance. Telling them apart takes what masked language modelling
    learns: which word goes where given its neighbours. It is SentEval's word-order probing idea
    (Conneau et al. 2018) on whole passages. The passage starts at a random word, so the
    docstrings' capitalised first words do not mark the in-order class."""
    words = doc.split()
    start = rng.randrange(len(words) - PASSAGE_WORDS + 1)
    passage = words[start : start + PASSAGE_WORDS]
    label = rng.choice((IN_ORDER, SHUFFLED))
    if label == SHUFFLED:
        rng.shuffle(passage)
    split = "test" if index % 4 == 3 else "train"
    return {"text": " ".join(passage), "label": label, "split": split}


def ensure_embedded_data(name: str = "stdlib_docs") -> Path:
    """The folder of embedded corpus `name` (one of `EMBEDDED`), written on first use
    (`omnimask.data.generate_once`: staged and renamed, so concurrent processes never see half
    a corpus); holds `corpus/docs.jsonl` and `labelled.jsonl`."""
    if name == "chains":
        folder = default_data_dir("text") / f"chains-v{CHAINS_VERSION}"
        return generate_once(folder, write_chain_data)
    if name == "communities":
        folder = default_data_dir("text") / f"communities-v{COMMUNITIES_VERSION}"
        return generate_once(folder, write_community_data)
    if name != "stdlib_docs":
        raise ConfigError(f"corpus.embedded={name!r}: expected one of {', '.join(EMBEDDED)}")
    return generate_once(embedded_dir(), write_embedded_data)


def write_embedded_data(folder: Path) -> None:
    """`corpus/docs.jsonl` (field "text") and `labelled.jsonl` ("text", "label", "split":
    `word_order_record`, from docstrings of `LABELLED_SOURCES` that are not in the corpus)."""
    (folder / "corpus").mkdir()
    seen: set[str] = set()
    with open(folder / "corpus" / "docs.jsonl", "w", encoding="utf-8") as corpus:
        for module in CORPUS_SOURCES:
            for doc in stdlib_docstrings(module):
                if doc not in seen:
                    seen.add(doc)
                    corpus.write(json.dumps({"text": doc, "module": module}) + "\n")
    held_out = dict.fromkeys(d for m in LABELLED_SOURCES for d in stdlib_docstrings(m))
    docs = [d for d in held_out if d not in seen and len(d.split()) >= PASSAGE_WORDS]
    rng = random.Random(0)
    with open(folder / "labelled.jsonl", "w", encoding="utf-8") as labelled:
        for index, doc in enumerate(docs):
            labelled.write(json.dumps(word_order_record(doc, index, rng)) + "\n")


def chain_words(rng: random.Random) -> list[str]:
    """`CHAIN_WORDS` distinct made-up words of two consonant-vowel syllables ("kabo")."""
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    return rng.sample([a + b for a in syllables for b in syllables], CHAIN_WORDS)


def chain_successors(rng: random.Random) -> list[list[int]]:
    """Per word, the `CHAIN_SUCCESSORS` words that may follow it: word w's k-th successor is
    `permutation_k[w]`, one random permutation of the vocabulary per k.

    The transition matrix is then a mean of permutation matrices (doubly stochastic): every word
    has as many predecessors as successors, so a random walk visits every word equally often,
    and so does the walk read backwards (a walk of the transposed matrix)."""
    permutations = [rng.sample(range(CHAIN_WORDS), CHAIN_WORDS) for _ in range(CHAIN_SUCCESSORS)]
    return [[p[w] for p in permutations] for w in range(CHAIN_WORDS)]


def chain_walk(
    successors: list[list[int]], length: int, rng: random.Random, start: int | None = None
) -> list[int]:
    """`length` words: `start` (default a uniform first word), then each next one drawn
    uniformly from the current word's successors."""
    walk = [rng.randrange(len(successors)) if start is None else start]
    for _ in range(length - 1):
        walk.append(rng.choice(successors[walk[-1]]))
    return walk


def write_chain_data(folder: Path) -> None:
    """`corpus/docs.jsonl`: `CHAIN_CORPUS_DOCUMENTS` walks of the language, and
    `labelled.jsonl`: `CHAIN_LABELLED_PASSAGES` new walks, written forwards (label 0) or
    backwards (label 1) at random, every fourth one test. Deterministic (seed 0).

    Why this task: a passage and its reversal hold the same words and the same pairs of
    neighbours, and over many passages every word is equally frequent either way, so functions
    of the bag of words or of the unordered neighbour pairs score chance (a test pins this). What
    tells them apart is which word of each pair comes first: the language's grammar, an
    arbitrary 1/8 of all ordered pairs, which only text in the language can teach. Masked
    language modelling learns it, because predicting a masked word means knowing which words
    may follow its left neighbour and precede its right one; a random-init encoder has no way
    to know it. This is the word-order probe of the stdlib corpus without English's give-aways
    (function words, punctuation) that random features pick up."""
    rng = random.Random(0)
    words = chain_words(rng)
    successors = chain_successors(rng)
    (folder / "corpus").mkdir()
    with open(folder / "corpus" / "docs.jsonl", "w", encoding="utf-8") as corpus:
        for _ in range(CHAIN_CORPUS_DOCUMENTS):
            walk = chain_walk(successors, CHAIN_PASSAGE_WORDS, rng)
            corpus.write(json.dumps({"text": " ".join(words[w] for w in walk)}) + "\n")
    with open(folder / "labelled.jsonl", "w", encoding="utf-8") as labelled:
        for index in range(CHAIN_LABELLED_PASSAGES):
            walk = chain_walk(successors, CHAIN_PASSAGE_WORDS, rng)
            label = rng.choice((FORWARDS, BACKWARDS))
            text = " ".join(words[w] for w in (walk[::-1] if label == BACKWARDS else walk))
            split = "test" if index % 4 == 3 else "train"
            labelled.write(json.dumps({"text": text, "label": label, "split": split}) + "\n")


def community_halves() -> list[tuple[list[int], list[int]]]:
    """(first half, second half) of each community's word indices."""
    size = 2 * COMMUNITY_HALF
    return [
        (
            list(range(c * size, c * size + COMMUNITY_HALF)),
            list(range(c * size + COMMUNITY_HALF, (c + 1) * size)),
        )
        for c in range(COMMUNITIES)
    ]


def community_successors(rng: random.Random) -> tuple[list[list[int]], list[list[int]]]:
    """(successors in the word's own half, successors in the other half of its community), four
    of each per word, each one a random bijection between the halves: every word has as many
    predecessors as successors, so walks visit the words of a community equally often."""
    own: list[list[int]] = [[] for _ in range(CHAIN_WORDS)]
    other: list[list[int]] = [[] for _ in range(CHAIN_WORDS)]
    for first, second in community_halves():
        pairs = ((first, first, own), (second, second, own))
        pairs += ((first, second, other), (second, first, other))
        for _ in range(CHAIN_SUCCESSORS // 2):
            for source, target, into in pairs:
                for word, follower in zip(source, rng.sample(target, len(target))):
                    into[word].append(follower)
    return own, other


def write_community_data(folder: Path) -> None:
    """`corpus/docs.jsonl`: `CHAIN_CORPUS_DOCUMENTS` walks over the chain words whose grammar
    keeps every walk inside one community (a word's 8 successors: 4 in its own half of the
    community, 4 in the other half), and `labelled.jsonl`: which community is a passage from?
    Train passages walk the first halves only, test passages the second halves only.
    Deterministic (seed 0).

    Why this task: train and test passages share no word, so nothing read off the words
    themselves carries over: counts, word pairs and a random-init encoder (random vectors of
    words it never saw labelled) score chance (a test pins the first two). What carries over is
    what the corpus teaches about the words: the two halves of a community follow each other in
    every document, so masked language modelling, predicting a word from its neighbours, gives
    the words of a community similar representations (the distributional hypothesis). Unlike
    the chains' direction label, which is independent of the words by construction and so a
    low-variance direction of MLM features, the community is what most sets a passage's
    features apart, so the cosine kNN probe can read it too."""
    rng = random.Random(0)
    words = chain_words(rng)
    own, other = community_successors(rng)
    every = [a + b for a, b in zip(own, other)]

    def walk(successors: list[list[int]], start: int | None = None) -> str:
        return " ".join(words[w] for w in chain_walk(successors, CHAIN_PASSAGE_WORDS, rng, start))

    (folder / "corpus").mkdir()
    with open(folder / "corpus" / "docs.jsonl", "w", encoding="utf-8") as corpus:
        for _ in range(CHAIN_CORPUS_DOCUMENTS):
            corpus.write(json.dumps({"text": walk(every)}) + "\n")
    halves = community_halves()
    with open(folder / "labelled.jsonl", "w", encoding="utf-8") as labelled:
        for split, half, count in (
            ("train", 0, COMMUNITY_TRAIN_PASSAGES),
            ("test", 1, COMMUNITY_TEST_PASSAGES),
        ):
            for _ in range(count):
                community = rng.randrange(COMMUNITIES)
                text = walk(own, rng.choice(halves[community][half]))
                record = {"text": text, "label": community, "split": split}
                labelled.write(json.dumps(record) + "\n")


def read_labelled(path: Path, field: str) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(train, test) lists of (text, label) from a JSONL file with `field`, "label" (int or
    string; strings are numbered in sorted order) and optionally "split" (train | test; without
    it every fourth record is test)."""
    records = []
    for document in read_file(path, field):
        line = int(document.source.rsplit(":", 1)[1])
        records.append((line, document.text))
    raw_lines = decode_utf8(path, path.read_bytes()).splitlines()
    rows = []
    for line, text in records:
        record = json.loads(raw_lines[line - 1])
        if "label" not in record:
            raise BadSampleError(f"{path}:{line}", "no 'label' field")
        rows.append((text, record["label"], record.get("split")))
    names = sorted({str(label) for _, label, _ in rows})
    as_int = all(isinstance(label, int) for _, label, _ in rows)
    train, test = [], []
    for index, (text, label, split) in enumerate(rows):
        number = label if as_int else names.index(str(label))
        is_test = split == "test" if split is not None else index % 4 == 3
        (test if is_test else train).append((text, number))
    return train, test
