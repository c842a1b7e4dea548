"""The repository holds no host code and changes no host (issue 21): no file at a host's path, no known line of a
host's code (as a line or inside a string), and no write into a host's tree from tests/, todo_ext/ or scripts/.

Host lines are known by hash only (tests/host_lines.sha256: the first HASH_CHARS hex digits of the sha256 of each
normalised line, from the host files the project mirrors or reads, at the commits in README's Hosts), so the check
itself carries no host code. Imports, signatures and decorators are not compared (the names a mirror must share).
tests/host_lines_allowed.txt lists, by hash, file and reason, the other lines the repository still shares with a
host: generic idioms, layers named and shaped as a host's state dict, calls of the attention function ToDo wraps,
and lines of the DiT stand-ins' forwards not yet rewritten. Writes are read from the AST: a write whose
destination is built from a host tree (a path segment only a host has, or a variable that names a host's folder)
fails, and a fixture maker in tests/e2e may write only below the paths handed to it (its command-line arguments or
its function's parameters).
"""

from __future__ import annotations

import ast
import hashlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HASHES = Path(__file__).with_name("host_lines.sha256")
ALLOWED = Path(__file__).with_name("host_lines_allowed.txt")
HASH_CHARS = 10
SHORTEST_LINE = 20
SCANNED = ("tests", "todo_ext", "scripts")
TEXT_SUFFIXES = {".py", ".js", ".md", ".json", ".toml", ".yml", ".yaml", ".txt", ".cfg", ".sh", ""}
SKIPPED_PARTS = {".git", ".venv", "node_modules", "__pycache__", "bench-results", ".ruff_cache", ".pytest_cache"}
STAND_INS = ("tests/webui_stub", "tests/forge_stub", "todo_ext/bench/dit_stub")
"""The project's own small mirrors of host APIs: they may sit at a host's paths (modules/processing.py)."""
HOST_PATHS = {"webui.py", "launch.py", "webui-user.sh", "modules", "modules_forge", "backend", "ldm_patched",
              "extensions-builtin", "repositories", "packages_3rdparty", "huggingface_guess", "k_diffusion"}
"""Top-level files and folders of the hosts' trees that the extension has no reason to hold."""
HOST_SEGMENTS = HOST_PATHS | {"models", "configs", "extensions", "embeddings", "localizations"}
"""Path segments that point into a host's tree when a write's destination is built from them."""
HOST_FOLDER_NAME = re.compile(r"(?:^|_)(?:forge|webui|reforge|neo|classic|a1111|host)(?:_(?:dir|tree|root|path))?$"
                              r"|_tree$", re.IGNORECASE)
"""Variable names that hold a host's folder (forge, webui_dir, host_tree, ...)."""
MODULE_WRITERS = {("os", "makedirs"): 0, ("os", "mkdir"): 0, ("os", "remove"): 0, ("os", "unlink"): 0,
                  ("os", "rmdir"): 0, ("os", "replace"): 1, ("os", "rename"): 1, ("os", "renames"): 1,
                  ("os", "symlink"): 1, ("os", "link"): 1, ("shutil", "copy"): 1, ("shutil", "copy2"): 1,
                  ("shutil", "copyfile"): 1, ("shutil", "copytree"): 1, ("shutil", "move"): 1,
                  ("shutil", "rmtree"): 0, ("torch", "save"): 1, ("np", "save"): 0, ("numpy", "save"): 0,
                  ("json", "dump"): 1, ("pickle", "dump"): 1, ("yaml", "dump"): 1}
"""Module functions that write, with the position of their destination argument."""
OPENERS = {"io", "gzip", "bz2", "lzma", "codecs"}
"""Modules whose open(path, mode) opens a file like the builtin."""
PATH_WRITERS = {"write_text", "write_bytes", "mkdir", "touch", "unlink", "rmdir", "symlink_to", "hardlink_to"}
"""pathlib.Path methods that write to the path they are called on."""


CONTRACT_LINE = re.compile(r"(?:from \S+ )?import |(?:async )?def |class |@")
"""Imports, signatures and decorators: the names a stand-in or the glue must share with the host it mirrors."""


def normalised(line: str) -> str | None:
    """A line as compared with the hosts': whitespace collapsed; None where it is too short or too plain (no word)
    to tell one project's code from another's, or is a contract line (CONTRACT_LINE)."""
    text = " ".join(line.split())
    if len(text) < SHORTEST_LINE or text.startswith("#") or not re.search(r"[A-Za-z_]{3}", text) \
            or CONTRACT_LINE.match(text):
        return None
    return text


def line_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_CHARS]


def repository_files() -> list[Path]:
    return sorted(path for path in ROOT.rglob("*") if path.is_file() and not SKIPPED_PARTS & set(path.parts)
                  and not any(part.startswith(".") and part not in (".ci",) for part in path.relative_to(ROOT).parts))


def lines_of(path: Path) -> list[tuple[int, str]]:
    """(line number, normalised text) of the file's lines and, in Python, of the lines inside its strings."""
    source = path.read_text(encoding="utf-8", errors="replace")
    found = [(number, text) for number, line in enumerate(source.splitlines(), 1) if (text := normalised(line))]
    if path.suffix == ".py":
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                found += [(node.lineno, text) for piece in node.value.splitlines() if (text := normalised(piece))]
    return found


def host_lines_in(path: Path, known: set[str], allowed: set[tuple[str, str]], root: Path = ROOT) -> list[str]:
    relative = path.relative_to(root).as_posix()
    return [f"{relative}:{number}: {text}" for number, text in lines_of(path)
            if (digest := line_hash(text)) in known and (digest, relative) not in allowed]


def known_host_lines() -> set[str]:
    return set(HASHES.read_text().split())


def allowed_lines() -> set[tuple[str, str]]:
    """(hash, file) pairs of tests/host_lines_allowed.txt: `hash file reason...` per line."""
    rows = [line.split(maxsplit=2) for line in ALLOWED.read_text().splitlines() if line and not line.startswith("#")]
    assert all(len(row) == 3 for row in rows), "each allowed line needs its hash, its file and a reason"
    return {(digest, file) for digest, file, _ in rows}


def host_path_files(paths: list[str]) -> list[str]:
    """The paths (relative, POSIX) that sit where a host keeps its own files, outside the stand-ins."""
    return [path for path in paths if not path.startswith(STAND_INS) and path.split("/")[0] in HOST_PATHS]


class _Destinations(ast.NodeVisitor):
    """Each write call of a module with what its destination is built from: the string constants and the names
    (variables, parameters, `args.x` attributes) it resolves to through the assignments of its function and of
    the module."""

    def __init__(self, tree: ast.Module):
        self.module_values = self._assignments(tree.body)
        self.writes: list[tuple[int, str, set[str], set[str], set[str]]] = []
        self.visit(tree)

    @staticmethod
    def _assignments(body) -> dict[str, list[ast.expr]]:
        values: dict[str, list[ast.expr]] = {}
        for statement in body:
            for node in ast.walk(statement) if not isinstance(statement, ast.FunctionDef) else ():
                if isinstance(node, ast.Assign):
                    for target in node.targets:
                        if isinstance(target, ast.Name):
                            values.setdefault(target.id, []).append(node.value)
                elif isinstance(node, (ast.AnnAssign, ast.NamedExpr)) and isinstance(node.target, ast.Name) \
                        and node.value is not None:
                    values.setdefault(node.target.id, []).append(node.value)
                elif isinstance(node, ast.withitem) and isinstance(node.optional_vars, ast.Name):
                    values.setdefault(node.optional_vars.id, []).append(node.context_expr)
                elif isinstance(node, (ast.For, ast.comprehension)) and isinstance(node.target, ast.Name):
                    values.setdefault(node.target.id, []).append(node.iter)
        return values

    def visit_FunctionDef(self, function: ast.FunctionDef) -> None:
        values = {**self.module_values, **self._assignments(function.body)}
        parameters = {argument.arg for argument in (*function.args.posonlyargs, *function.args.args,
                                                    *function.args.kwonlyargs)}
        for node in ast.walk(function):
            if isinstance(node, ast.Call):
                self._record(node, values, parameters)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Module(self, module: ast.Module) -> None:
        for statement in module.body:
            if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self.visit_FunctionDef(statement)
            elif isinstance(statement, ast.ClassDef):
                for inner in statement.body:
                    if isinstance(inner, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        self.visit_FunctionDef(inner)
            else:
                for node in ast.walk(statement):
                    if isinstance(node, ast.Call):
                        self._record(node, self.module_values, set())

    def _record(self, call: ast.Call, values, parameters) -> None:
        destination = self._destination(call)
        if destination is None:
            return
        strings, names, roots = set(), set(), set()
        self._resolve(destination, values, parameters, strings, names, roots, set())
        self.writes.append((call.lineno, ast.unparse(call.func), strings, names, roots))

    @staticmethod
    def _destination(call: ast.Call) -> ast.expr | None:
        """The expression a write call writes to; None for a call that does not write."""
        function = call.func

        def argument(index: int) -> ast.expr | None:
            return call.args[index] if len(call.args) > index else None

        def writing(mode: ast.expr | None) -> bool:
            mode = mode or next((keyword.value for keyword in call.keywords if keyword.arg == "mode"), None)
            text = mode.value if isinstance(mode, ast.Constant) else None
            return isinstance(text, str) and bool(set(text) & set("wax+"))

        if isinstance(function, ast.Name):
            if function.id == "open":
                return argument(0) if writing(argument(1)) else None
            return argument(1) if function.id == "save_file" else None
        if not isinstance(function, ast.Attribute):
            return None
        receiver = function.value.id if isinstance(function.value, ast.Name) else None
        if (receiver, function.attr) in MODULE_WRITERS:
            return argument(MODULE_WRITERS[receiver, function.attr])
        if function.attr == "open" and receiver in OPENERS:
            return argument(0) if writing(argument(1)) else None
        if function.attr == "open" and receiver != "os":
            return function.value if writing(argument(0)) else None
        if function.attr == "save_file":
            return argument(1)
        return function.value if function.attr in PATH_WRITERS else None

    def _resolve(self, node, values, parameters, strings, names, roots, seen) -> None:
        for part in ast.walk(node):
            if isinstance(part, ast.Constant) and isinstance(part.value, str):
                strings.add(part.value)
            elif isinstance(part, ast.Attribute) and isinstance(part.value, ast.Name) and part.value.id == "args":
                names.add(part.attr)
                roots.add(f"args.{part.attr}")
            elif isinstance(part, ast.Name):
                names.add(part.id)
                if part.id in parameters:
                    roots.add(part.id)
                if part.id not in seen and part.id in values:
                    seen.add(part.id)
                    for value in values[part.id]:
                        self._resolve(value, values, parameters, strings, names, roots, seen)


def writes_into_a_host(source: str) -> list[str]:
    """The write calls of `source` whose destination is built from a host's tree: a string naming a folder or file
    only a host has, or a variable that names a host's folder."""
    found = []
    for line, name, strings, names, _ in _Destinations(ast.parse(source)).writes:
        segments = {segment for string in strings for segment in re.split(r"[/\\]", string)} & HOST_SEGMENTS
        folders = {variable for variable in names if HOST_FOLDER_NAME.search(variable)}
        if segments or folders:
            found.append(f"line {line}: {name}() into {sorted(segments | folders)}")
    return found


def writes_outside_the_given_paths(source: str) -> list[str]:
    """The write calls of a fixture maker whose destination is not built from a path handed to it (a command-line
    argument or a parameter of its function)."""
    return [f"line {line}: {name}() into a path not handed to the maker"
            for line, name, _, _, roots in _Destinations(ast.parse(source)).writes if not roots]


def scanned_python() -> list[Path]:
    return [path for path in repository_files() if path.suffix == ".py"
            and path.relative_to(ROOT).parts[0] in SCANNED]


def fixture_makers() -> list[Path]:
    return [path for path in (ROOT / "tests" / "e2e").glob("*.py")
            if not path.name.startswith(("test_", "conftest"))]


def test_no_file_sits_at_a_hosts_path():
    paths = [path.relative_to(ROOT).as_posix() for path in repository_files()]
    assert not host_path_files(paths)


def test_no_known_host_line_in_the_repository():
    known, allowed = known_host_lines(), allowed_lines()
    found = [line for path in repository_files() if path.suffix in TEXT_SUFFIXES and path.name != HASHES.name
             for line in host_lines_in(path, known, allowed)]
    assert not found, "\n".join(found)


def test_every_allowed_line_is_a_host_line_still_in_its_file():
    """An allowance outlives its reason once the line left its file (or was never a host line): remove it then."""
    known = known_host_lines()
    present = {(line_hash(text), file) for file in {file for _, file in allowed_lines()}
               for _, text in lines_of(ROOT / file)}
    stale = {(digest, file) for digest, file in allowed_lines() if digest not in known or (digest, file) not in present}
    assert not stale, sorted(stale)


@pytest.mark.parametrize("path", scanned_python(), ids=lambda path: path.relative_to(ROOT).as_posix())
def test_no_write_into_a_hosts_tree(path):
    assert not writes_into_a_host(path.read_text())


@pytest.mark.parametrize("path", fixture_makers(), ids=lambda path: path.name)
def test_fixture_makers_write_only_below_the_paths_given_to_them(path):
    assert not writes_outside_the_given_paths(path.read_text())


PATCHING_A_HOST = '''
import json, os
DETECTION = os.path.join("repositories", "huggingface_guess", "huggingface_guess", "detection" + ".py")

def rewrite_detection(forge):
    path = os.path.join(forge, DETECTION)
    with open(path, "w") as file:
        file.write("")

def rewrite_t5_config(root, folder):
    path = os.path.join(root, "backend", "huggingface", folder, "config.json")
    with open(path, "w") as file:
        json.dump({}, file)

def main(args):
    out = args.host_tree / "models" / "ControlNet"
    out.mkdir(parents=True, exist_ok=True)
'''
"""What the Forge DiT maker and the LLLite maker did before issue 21: each of the three functions writes into a
host's tree (the T5 config twice: open, then json.dump into that file)."""

WRITING_A_FIXTURE = '''
import os, shutil
from safetensors.torch import save_file

def write(path, tensors):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file(tensors, path + ".tmp")
    os.replace(path + ".tmp", path)

def main(args):
    shutil.copyfile(args.tokenizer, os.path.join(args.hf_home, "hub", "tokenizer.json"))
    with open(os.path.join(args.out, "sd15-random.safetensors"), "wb") as file:
        file.write(b"")
'''


def test_the_write_scan_flags_a_write_into_a_hosts_tree():
    assert [finding.split(":")[0] for finding in writes_into_a_host(PATCHING_A_HOST)] == [
        "line 7", "line 12", "line 13", "line 17"]
    assert not writes_into_a_host(WRITING_A_FIXTURE)


def test_the_maker_scan_flags_a_write_to_a_path_of_its_own():
    assert not writes_outside_the_given_paths(WRITING_A_FIXTURE)
    assert writes_outside_the_given_paths('import torch\n\ndef main():\n    torch.save({}, "/tmp/vae.pt")\n') == [
        "line 4: torch.save() into a path not handed to the maker"]


def test_the_line_scan_flags_a_host_line_held_as_a_string(tmp_path):
    """A line of Forge's huggingface_guess detection that the Forge DiT maker held as a string to rewrite it."""
    holder = tmp_path / "maker.py"
    holder.write_text("FIXED = ('        dit_config[\"depth\"] = 19\\n',)\n")
    assert host_lines_in(holder, known_host_lines(), set(), tmp_path) == ['maker.py:1: dit_config["depth"] = 19']


def test_the_path_scan_flags_a_host_file_outside_the_stand_ins():
    assert host_path_files(["modules/processing.py", "tests/webui_stub/modules/processing.py",
                            "scripts/todo_script.py", "backend/loader.py"]) == ["modules/processing.py",
                                                                              "backend/loader.py"]
