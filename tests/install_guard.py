"""What the code runs and reads from the system, and which Debian package provides it.

The uses are extracted from the code, not listed by hand:
- shell scripts (scripts/): the command words of every simple command (also inside $(...), after exec,
  timeout, setsid, `command -v NAME`), absolute paths under /usr, /bin, /sbin, /lib;
- Python (volstack/, tests/, bench/): the program of every subprocess call (a list literal, or a name bound
  to one, or a module constant) and of shutil.which, and absolute system paths in string constants;
- the agent's declared list (volstack/agent/programs.py), which its code runs.
Each use is resolved on this machine (command -v, readlink -f, globs) and to its package with dpkg -S.
"""
import ast
import glob
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SYSTEM_PATH = re.compile(r"(?<![\w$}./*-])/(?:usr|bin|sbin|lib|lib64)/[^\s\"'`:;)|]+")


@dataclass(frozen=True)
class Use:
    where: str      # file:line
    kind: str       # "program" | "file" | "python"
    name: str       # program name, absolute path (may be a glob) or Python module
    optional: bool = False


# ---------------------------------------------------------------- shell scripts

_BUILTINS = set("""alias bg bind break builtin caller cd command compgen complete continue declare dirs disown echo
enable eval exec exit export false fc fg getopts hash help history jobs kill let local logout mapfile popd printf
pushd pwd read readarray readonly return set shift shopt source suspend test times trap true type typeset ulimit
umask unalias unset wait . : [ [[ ]] ]] { } ! if then else elif fi case esac for select while until do done in
function time coproc""".split())
# A script line that uses a program only when it is there (and works without it) says so in a comment.
_OPTIONAL_MARK = "install-guard: optional"
_PREFIXES = {"exec", "setsid", "nohup", "env", "nice", "!", "then", "do", "else", "elif", "if", "while", "until",
             "time", "{"}


def _shell_segments(text: str):
    """Yield (line, words) for each simple command; quoted parts stay in the word with a marker so that
    "$X" and '...' never look like command names. Heredoc bodies are skipped (they are data)."""
    i, n, line = 0, len(text), 1
    words, cur, heredocs, case_depth = [], None, [], []
    seg_line = 1

    def end_word():
        nonlocal cur
        if cur is not None:
            words.append(cur)
            cur = None

    def end_segment():
        nonlocal words, seg_line
        end_word()
        if words:
            yield_list.append((seg_line, words))
        words = []
        seg_line = line

    yield_list: list = []
    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n:
            if text[i + 1] == "\n":
                i += 2
                line += 1
                continue
            cur = (cur or "") + text[i + 1]
            i += 2
            continue
        if c == "\n":
            end_segment()
            line += 1
            i += 1
            for delim in heredocs:          # skip each pending heredoc body
                while i < n:
                    j = text.find("\n", i)
                    j = n if j < 0 else j
                    body_line = text[i:j]
                    i = j + 1
                    line += 1
                    if body_line.strip() == delim:
                        break
            heredocs = []
            seg_line = line
            continue
        if c == "#" and cur is None:
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        if c in " \t":
            end_word()
            i += 1
            continue
        if c == "'":
            j = text.index("'", i + 1)
            line += text.count("\n", i, j)
            cur = (cur or "") + "\0'" + text[i + 1:j]
            i = j + 1
            continue
        if c == '"':                          # a string: only its $(...) run commands
            j = i + 1
            while j < n and text[j] != '"':
                if text[j] == "\\":
                    j += 2
                    continue
                if text.startswith("$(", j) and not text.startswith("$((", j):
                    k = _closing(text, j + 2)
                    for sub_line, sub_words in _shell_segments(text[j + 2:k]):
                        yield_list.append((line + text.count("\n", i, j) + sub_line - 1, sub_words))
                    j = k
                j += 1
            line += text.count("\n", i, j)
            cur = (cur or "") + "\0$"
            i = j + 1
            continue
        if text.startswith("$(", i) and not text.startswith("$((", i) or c == "`" or \
                c == "(" and cur is not None and cur.endswith("<"):
            # a command substitution (or <( process substitution )): its commands are scanned on their own
            start = i + (1 if c in "`(" else 2)
            k = text.index("`", start) if c == "`" else _closing(text, start)
            for sub_line, sub_words in _shell_segments(text[start:k]):
                yield_list.append((line + sub_line - 1, sub_words))
            line += text.count("\n", i, k)
            cur = (cur or "") + "\0$"
            i = k + 1
            continue
        if c == "(" and cur is not None and cur.endswith("="):   # an array: values, not commands
            k = _closing(text, i + 1)
            line += text.count("\n", i, k)
            cur += "\0("
            i = k + 1
            continue
        if c == "$":                          # $VAR, ${...}, $((...)): a value, never a command name
            if text.startswith("${", i):
                j = text.index("}", i)
            elif text.startswith("$((", i):
                j = text.index("))", i) + 1
            else:
                m = re.compile(r"\$(\w+|.)").match(text, i)
                j = m.end() - 1
            cur = (cur or "") + "\0$"
            i = j + 1
            continue
        if text.startswith("<<", i) and not text.startswith("<<<", i):
            m = re.compile(r"<<-?\s*(['\"]?)(\w+)\1").match(text, i)
            if m:
                heredocs.append(m.group(2))
                end_word()
                i = m.end()
                continue
        if c in ";&|()":
            op = re.compile(r";;|&&|\|\||[;&|()]").match(text, i).group(0)
            if op in (")", "|") and case_depth and case_depth[-1] == "pattern":
                words = []                    # a case pattern, not a command
                cur = None
                case_depth[-1] = "body" if op == ")" else "pattern"
            elif op == ";;" and case_depth:
                end_segment()
                case_depth[-1] = "pattern"
            else:
                end_segment()
            i += len(op)
            continue
        if c in "<>":                          # a redirection: its target is a file, not a command
            m = re.compile(r"[<>]+&?").match(text, i)
            end_word() if cur and not cur.isdigit() else None
            cur = None
            i = m.end()
            while i < n and text[i] in " \t":
                i += 1
            m = re.compile(r"(\"[^\"]*\"|'[^']*'|[^\s;&|()<>])*").match(text, i)
            i = m.end()
            continue
        cur = (cur or "") + c
        i += 1
        # case ... in / esac bracket the pattern state
        if cur == "in" and words and words[0] == "case" and (i >= n or text[i] in " \t\n"):
            words = []
            cur = None
            case_depth.append("pattern")
        elif cur == "esac" and (i >= n or text[i] in " \t\n;") and not words and case_depth:
            case_depth.pop()
            cur = None
    end_segment()
    return yield_list


def _closing(text: str, i: int) -> int:
    """The index of the ')' that closes a '(' just before i (quotes and nested parentheses skipped)."""
    depth = 1
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "#" and (i == 0 or text[i - 1] in " \t\n"):
            i = text.find("\n", i)
        elif c in "'\"":
            i = text.index(c, i + 1)
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise ValueError("unbalanced parentheses")


def _command_word(words: list[str]):
    """The program a simple command runs (None: a builtin, a keyword, a variable or an assignment)."""
    ws = list(words)
    while ws:
        w = ws[0]
        if re.fullmatch(r"\w+(\[[^]]*\])?\+?=.*", w, re.S) or w in _PREFIXES:
            ws.pop(0)
        elif w == "timeout":
            ws.pop(0)
            while ws and (ws[0].startswith("-") or re.fullmatch(r"[\d.]+[smhd]?|\0\$", ws[0])):
                ws.pop(0)
        elif w == "command" and len(ws) > 2 and ws[1] == "-v":
            return ws[2]
        elif w == "flock" and len(ws) == 2:
            return "flock"
        else:
            return w
    return None


def shell_uses(path: Path) -> list[Use]:
    text = path.read_text()
    rel = path.relative_to(ROOT)
    lines = text.splitlines()
    functions = set(re.findall(r"^\s*(\w[\w-]*)\s*\(\)", text, re.M))
    uses = []
    for line, words in _shell_segments(text):
        w = _command_word(words)
        if (w is None or "\0" in w or w in _BUILTINS or w in functions or not re.fullmatch(r"[\w.+-]+|/[\w./+-]+", w)
                or w.isdigit()):
            continue
        uses.append(Use(f"{rel}:{line}", "program", w, _OPTIONAL_MARK in lines[line - 1]))
    for m in SYSTEM_PATH.finditer(text):
        if not text[:m.start()].rstrip().endswith("<<") and _outside_heredoc(text, m.start()):
            uses.append(Use(f"{rel}:{text.count(chr(10), 0, m.start()) + 1}", "file", m.group(0)))
    return uses


def _outside_heredoc(text: str, pos: int) -> bool:
    """True unless pos lies in a heredoc body (data for another machine, e.g. the guest's /init)."""
    for m in re.finditer(r"<<-?\s*(['\"]?)(\w+)\1[^\n]*\n", text):
        end = re.compile(rf"^\s*{m.group(2)}\s*$", re.M).search(text, m.end())
        if m.end() <= pos < (end.start() if end else len(text)):
            return False
    return True


# ---------------------------------------------------------------- Python

_SUBPROCESS = {"run", "Popen", "check_output", "check_call", "call"}


def python_uses(path: Path) -> list[Use]:
    tree = ast.parse(path.read_text())
    rel = path.relative_to(ROOT)
    agent = _agent_programs()
    optional = _agent_optional()
    scopes: dict = {}       # id(node) -> the innermost function (or the module) it is in
    binds: dict = {}        # (id(scope), name) -> the values assigned to name there

    def visit(node, scope):
        for child in ast.iter_child_nodes(node):
            scopes[id(child)] = scope
            if isinstance(child, ast.Assign):
                for t in child.targets:
                    if isinstance(t, ast.Name):
                        binds.setdefault((id(scope), t.id), []).append(child.value)
            visit(child, child if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else scope)
    visit(tree, tree)

    def bound(name: str, scope) -> list:
        return binds.get((id(scope), name), [])

    def program_of(expr):
        if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
            return expr.value
        if isinstance(expr, ast.Name):          # a module constant: QEMU = "qemu-..." or = programs.X
            return next(filter(None, map(program_of, bound(expr.id, tree))), None)
        if isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name) and expr.value.id == "programs":
            return agent.get(expr.attr)
        return None

    def programs_in(expr, scope, seen=()):
        """The programs an argv expression can start with: [PROG, ...], a + b, x if c else y, a name bound
        to one of these in the same function."""
        if isinstance(expr, (ast.List, ast.Tuple)):
            p = program_of(expr.elts[0]) if expr.elts else None
            return [p] if p else []
        if isinstance(expr, ast.BinOp):
            return programs_in(expr.left, scope, seen)
        if isinstance(expr, ast.IfExp):
            return programs_in(expr.body, scope, seen) + programs_in(expr.orelse, scope, seen)
        if isinstance(expr, ast.Name) and expr.id not in seen:
            return [p for v in bound(expr.id, scope) for p in programs_in(v, scope, (*seen, expr.id))]
        return []

    uses = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
        owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else None
        if owner == "subprocess" and name in _SUBPROCESS:
            for p in programs_in(node.args[0], scopes[id(node)]):
                uses.append(Use(f"{rel}:{node.lineno}", "program", p, p in optional))
        elif owner == "shutil" and name == "which":
            p = program_of(node.args[0])
            if p:
                uses.append(Use(f"{rel}:{node.lineno}", "program", p, p in optional))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            for m in SYSTEM_PATH.finditer(node.value):
                if m.start() == 0 and m.end() == len(node.value):
                    uses.append(Use(f"{rel}:{node.lineno}", "file", node.value))
    return uses


def _agent_programs() -> dict:
    from volstack.agent import programs
    return {k: v for k, v in vars(programs).items() if k.isupper() and isinstance(v, str)}


def _agent_optional() -> set:
    from volstack.agent import programs
    return set(programs.OPTIONAL)


def agent_declared() -> list[Use]:
    from volstack.agent import programs
    where = "volstack/agent/programs.py"
    uses = [Use(where, "program", p, p in programs.OPTIONAL) for p in programs.PACKAGES]
    uses += [Use(where, "python", os.path.join(programs.DEBIAN_PYTHON, m)) for m in programs.PYTHON_MODULES]
    return uses


def all_uses() -> list[Use]:
    uses = agent_declared()
    for p in sorted((ROOT / "scripts").iterdir()):
        if p.is_file() and p.read_text(errors="replace").startswith("#!/usr/bin/env bash"):
            uses += shell_uses(p)
    for top in ("volstack", "tests", "bench"):
        for p in sorted((ROOT / top).rglob("*.py")):
            uses += python_uses(p)
    return uses


# ---------------------------------------------------------------- resolving to packages

def named_packages(install_host: str, install: str) -> set[str]:
    """The packages the install scripts name: install-host.sh's pkgs=( ... ) and install.sh's `need PKG`."""
    m = re.search(r"^pkgs=\((.*?)^\)", install_host, re.S | re.M)
    assert m, "scripts/install-host.sh has no pkgs=( ... ) list"
    names = {w for line in m.group(1).splitlines() for w in line.split("#")[0].split()}
    names |= set(re.findall(r"^\s*need\s+([\w.+-]+)", install, re.M))
    return names


@dataclass
class Dpkg:
    """The installed packages: their dependencies (what apt installs without recommends) and priority."""
    depends: dict
    provides: dict
    base: set       # Essential: yes or Priority: required (every Debian system), with what they depend on

    @classmethod
    def load(cls) -> "Dpkg":
        out = subprocess.run(["dpkg-query", "-W", "-f",
                              "${db:Status-Abbrev}\t${Package}\t${Essential}\t${Priority}\t${Pre-Depends}\t"
                              "${Depends}\t${Provides}\n"], capture_output=True, text=True, check=True).stdout
        depends, provides, base = {}, {}, set()
        for row in out.splitlines():
            status, pkg, essential, priority, pre, dep, prov = row.split("\t")
            if not status.startswith("ii"):
                continue
            groups = [g.strip() for g in f"{pre},{dep}".split(",") if g.strip()]
            depends[pkg] = [[re.split(r"[\s(:]", alt.strip())[0] for alt in g.split("|")] for g in groups]
            for p in prov.split(","):
                if p.strip():
                    provides.setdefault(re.split(r"[\s(:]", p.strip())[0], []).append(pkg)
            if essential == "yes" or priority == "required":
                base.add(pkg)
        self = cls(depends, provides, set())
        self.base = self.closure(base)
        return self

    def closure(self, pkgs) -> set:
        """pkgs and what they depend on: the first alternative of each group that is installed."""
        seen, todo = set(), list(pkgs)
        while todo:
            p = todo.pop()
            if p in seen or p not in self.depends:
                continue
            seen.add(p)
            for group in self.depends[p]:
                for alt in group:
                    real = [alt] if alt in self.depends else self.provides.get(alt, [])
                    if real:
                        todo += real
                        break
        return seen


def resolve(use: Use) -> list[str]:
    """The file(s) on this machine that a use stands for (empty: not there)."""
    if use.kind == "program":
        found = shutil.which(use.name) if "/" not in use.name else (use.name if os.path.exists(use.name) else None)
        return [found] if found else []
    if use.kind == "python":
        return sorted(glob.glob(use.name + ".*.so")) or sorted(glob.glob(use.name + ".so"))
    return sorted(glob.glob(use.name))


def packages_of(paths: list[str]) -> dict:
    """path -> the Debian package that owns it (None: no package), by one dpkg -S run, through symlinks and
    alternatives (readlink -f) and trying both sides of the /usr merge (/bin/x is /usr/bin/x)."""
    candidates = {}
    for path in paths:
        c = []
        for p in (path, os.path.realpath(path)):
            c.append(p)
            if p.startswith("/usr/"):
                c.append(p[4:])
            elif re.match(r"/(bin|sbin|lib|lib64)/", p):
                c.append("/usr" + p)
        candidates[path] = list(dict.fromkeys(c))
    owner = {}
    every = sorted({c for cs in candidates.values() for c in cs})
    out = subprocess.run(["dpkg", "-S", *every], capture_output=True, text=True).stdout if every else ""
    for line in out.splitlines():
        if line.startswith("diversion by") or ": " not in line:
            continue
        pkgs, owned = line.rsplit(": ", 1)
        owner.setdefault(owned, pkgs.split(",")[0].strip().split(":")[0])
    return {path: next((owner[c] for c in cs if c in owner), None) for path, cs in candidates.items()}


def problems(uses: list[Use], named: set[str], dpkg: Dpkg) -> list[str]:
    """One line per use whose package is neither named by the install scripts (with what they depend on)
    nor part of every Debian system."""
    allowed = dpkg.closure(named) | dpkg.base
    found = {use: resolve(use) for use in uses}
    owner = packages_of(sorted({f for files in found.values() for f in files if not os.path.isdir(f)}))
    out = []
    for use, files in found.items():
        if not files:
            if not use.optional:
                out.append(f"{use.where}: {use.kind} {use.name} is not on this machine")
            continue
        for f in files:
            if os.path.isdir(f) or use.optional:
                continue            # a directory belongs to many packages; an optional use needs none
            pkg = owner[f]
            if pkg is None:
                out.append(f"{use.where}: {use.kind} {use.name} ({f}) belongs to no Debian package")
            elif pkg not in allowed:
                out.append(f"{use.where}: {use.kind} {use.name} ({f}) comes from Debian package {pkg}, which "
                           "scripts/install-host.sh / scripts/install.sh do not install")
    return out
