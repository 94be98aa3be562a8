"""Text corpora for the language-model jobs: the standard library's docstrings, and a node's own files.

The standard library's docstrings are real English technical prose that every Python installation
holds, so a model can be pretrained and fine-tuned with no download. The sources are *parsed*
with :mod:`ast`, never imported: importing ``tkinter``, ``antigravity`` or ``this`` has side
effects, and parsing reads exactly the same text on every machine with the same Python.

The modules fall into :data:`FAMILIES` of related topics. Split by family across edge nodes, the
text is naturally non-IID (the vocabulary of ``email`` and of ``statistics`` barely overlap), which
is what personalised and federated fine-tuning are about. Modules in no family (test suites, IDLE,
Tk, ``lib2to3``, ``distutils``, generated codec tables …) are left out.

Every distinct docstring goes to exactly one :data:`PARTS` member by a hash of its text, so the
base model is pretrained on text the federated jobs never evaluate on.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from fl.datasets import DatasetError

# family -> the top-level stdlib modules and packages it holds (a package brings its submodules)
FAMILIES: dict[str, tuple[str, ...]] = {
    "text": ("string", "textwrap", "difflib", "re", "sre_compile", "sre_parse", "sre_constants", "codecs",
             "stringprep", "locale", "gettext", "shlex", "pprint", "reprlib", "fnmatch"),
    "internet": ("email", "mailbox", "smtplib", "smtpd", "poplib", "imaplib", "mimetypes", "quopri", "base64",
                 "uu", "mailcap", "http", "urllib", "wsgiref", "cgi", "cgitb", "webbrowser", "ftplib", "nntplib",
                 "telnetlib", "socketserver", "socket", "ssl", "ipaddress", "netrc"),
    "markup": ("xml", "html", "_markupbase", "xmlrpc", "plistlib"),
    "concurrency": ("asyncio", "concurrent", "threading", "_threading_local", "multiprocessing", "queue", "sched",
                    "subprocess", "selectors", "signal", "asyncore", "asynchat", "contextvars"),
    "data_formats": ("json", "csv", "pickle", "pickletools", "copyreg", "_compat_pickle", "shelve", "dbm",
                     "sqlite3", "configparser", "tomllib", "struct", "zipfile", "tarfile", "gzip", "bz2",
                     "lzma", "_compression", "xdrlib", "chunk", "wave", "aifc", "sunau", "sndhdr", "imghdr",
                     "hashlib", "hmac", "uuid"),
    "filesystem": ("os", "posixpath", "ntpath", "genericpath", "pathlib", "shutil", "tempfile", "glob", "filecmp",
                   "fileinput", "stat", "io", "_pyio", "platform", "sysconfig", "getpass", "pty", "tty",
                   "nturl2path", "site", "_osx_support", "_aix_support"),
    "numbers_time": ("numbers", "decimal", "_pydecimal", "fractions", "statistics", "random", "colorsys", "bisect",
                     "heapq", "datetime", "calendar", "_strptime", "zoneinfo"),
    "language": ("ast", "dis", "inspect", "tokenize", "token", "keyword", "symtable", "typing", "types", "abc",
                 "_py_abc", "dataclasses", "enum", "functools", "contextlib", "weakref", "_weakrefset", "copy",
                 "collections", "_collections_abc", "operator", "importlib", "pkgutil", "modulefinder", "runpy",
                 "zipimport", "__future__"),
    "dev_tools": ("unittest", "doctest", "pdb", "bdb", "traceback", "linecache", "code", "codeop", "compileall",
                  "py_compile", "pyclbr", "pydoc", "trace", "timeit", "cProfile", "profile", "pstats", "tracemalloc",
                  "tabnanny", "zipapp", "venv", "warnings", "logging", "argparse", "optparse", "getopt", "cmd",
                  "rlcompleter"),
}
_FAMILY_OF = {module: family for family, modules in FAMILIES.items() for module in modules}
# folders inside a family's packages that hold no library docstrings
_SKIPPED_DIRS = frozenset({"test", "tests", "idle_test"})

# part -> the hash buckets (of 20) it takes: 5 % validate pretraining, 65 % pretrain, 30 % federated
PARTS: dict[str, range] = {"heldout": range(0, 1), "pretrain": range(1, 14), "federated": range(14, 20)}
_BUCKETS = 20

ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n{output}"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n{output}"
)

Texts = list[tuple[str, str]]  # (family, text) pairs


def stdlib_corpus(part: str = "all") -> Texts:
    """Every distinct docstring of this interpreter's standard library modules in
    :data:`FAMILIES`, as ``(family, docstring)`` in a fixed order (files by path, docstrings in
    source order), each docstring once (its first occurrence). ``part``: ``"all"`` or one of
    :data:`PARTS`. The same Python release gives the same corpus on every machine."""
    if part != "all" and part not in PARTS:
        raise ValueError(f"unknown corpus part {part!r}; choose all or one of {', '.join(PARTS)}")
    root = Path(sysconfig.get_paths()["stdlib"])
    texts = _distinct_docstrings(root)
    if not texts:
        raise DatasetError(f"no docstrings found under {root}: is it a Python standard library folder?")
    return [(family, doc) for family, doc in texts if part == "all" or _bucket(doc) in PARTS[part]]


@functools.lru_cache(maxsize=1)
def _distinct_docstrings(root: Path) -> tuple[tuple[str, str], ...]:
    """Parsing the library takes about two seconds; a process asking for several parts parses once."""
    seen: set[str] = set()
    texts = []
    for path, family in _family_sources(root):
        for doc in _docstrings(path):
            if doc not in seen:
                seen.add(doc)
                texts.append((family, doc))
    return tuple(texts)


def _family_sources(root: Path) -> list[tuple[Path, str]]:
    """The ``.py`` files of the family modules under ``root``, sorted by path, with their family."""
    found = []
    for module, family in _FAMILY_OF.items():
        package = root / module
        if package.is_dir():
            found += [(path, family) for path in package.rglob("*.py")
                      if not _SKIPPED_DIRS.intersection(path.relative_to(package).parts[:-1])]
        elif (root / f"{module}.py").is_file():
            found.append((root / f"{module}.py", family))
    return sorted(found)


def _docstrings(path: Path) -> Iterator[str]:
    """The module's, its classes' and its functions' docstrings (cleaned by ``inspect.cleandoc``),
    in source order, nested ones included."""
    stack: list[ast.AST] = [ast.parse(path.read_bytes(), filename=str(path))]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc and doc.strip():
                yield doc.strip()
        # into every node that holds statements: classes, functions, if/try/with/for blocks …
        stack.extend(reversed([child for child in ast.iter_child_nodes(node) if hasattr(child, "body")]))


def _bucket(text: str) -> int:
    """A stable bucket for ``text``, the same on every machine and Python (unlike ``hash``)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") % _BUCKETS


# --- a node's own data ---------------------------------------------------------------------------

def format_instruction(record: dict[str, object]) -> str:
    """One instruction record as an Alpaca-style prompt followed by its response."""
    try:
        instruction, output = str(record["instruction"]), str(record["output"])
    except KeyError as exc:
        raise DatasetError(f"an instruction record needs 'instruction' and 'output'; it lacks {exc}") from None
    extra = str(record.get("input") or "").strip()
    template = ALPACA_WITH_INPUT if extra else ALPACA_NO_INPUT
    return template.format(instruction=instruction.strip(), input=extra, output=output.strip())


def read_jsonl(path: str | Path) -> list[str]:
    """Instruction data in the FLB format (one JSON object a line: ``instruction``, optional
    ``input``, ``output``), each record formatted by :func:`format_instruction`. Blank lines are
    skipped; a malformed line is a :class:`DatasetError` naming the file and line."""
    path = Path(path)
    texts = []
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}:{number}: not JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise DatasetError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
        try:
            texts.append(format_instruction(record))
        except DatasetError as exc:
            raise DatasetError(f"{path}:{number}: {exc}") from None
    return texts


def read_text_folder(folder: str | Path) -> list[str]:
    """The text of every ``*.txt`` file directly in ``folder``, sorted by name (empty files skipped)."""
    return [text for path in _files(folder, "*.txt") for text in read_data_file(path)]


def read_data_file(path: str | Path) -> list[str]:
    """One data file's texts: a ``*.jsonl`` file's instruction records (:func:`read_jsonl`), or
    a ``*.txt`` file's whole text (none when it is empty)."""
    path = Path(path)
    if path.suffix == ".jsonl":
        return read_jsonl(path)
    text = _read_text(path).strip()
    return [text] if text else []


def data_files(folder: str | Path) -> list[Path]:
    """A node's data files: every ``*.jsonl`` file directly in ``folder``, then every ``*.txt``
    file, each group sorted by name."""
    return _files(folder, "*.jsonl") + _files(folder, "*.txt")


def read_data_folder(folder: str | Path) -> list[str]:
    """A node's own training text: the texts of its :func:`data_files`, in that order."""
    texts = [text for path in data_files(folder) for text in read_data_file(path)]
    if not texts:
        raise DatasetError(f"{folder} holds no *.jsonl or *.txt text")
    return texts


def _files(folder: str | Path, pattern: str) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"data folder {folder} does not exist")
    return sorted(p for p in folder.glob(pattern) if p.is_file())


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(f"{path} does not exist") from None
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
