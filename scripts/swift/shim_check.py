#!/usr/bin/env python3
"""Checks CoreMLShim against Apple's SDK as the objc2-core-ml crate generates it.

    python3 scripts/swift/shim_check.py [--objc2 DIR] [--shim-dir DIR] [--self-test]
    python3 scripts/swift/shim_check.py --headers DIR   # AVAIL against a real SDK's headers

CoreMLShim (every .swift file in coreml-bridge/Sources/CoreMLShim/) mirrors, by hand, the Core ML
declarations our adapter calls, so the adapter type-checks on Linux. objc2-core-ml is generated
from Apple's SDK headers. This script:

1. lists every declaration of the shim (types, enum cases with raw values, properties, methods,
   initialisers, constants) by its Swift key, e.g. `MLModel.prediction(from:)`, with its
   `throws`/`async`, whether a property is settable, and its `@available` (its own, else its
   enclosing type's or extension's);
2. requires each key to have a row in shim_map.py (MAP, or PENDING for declarations issue #12
   is adding) naming the Objective-C declaration behind it; a shim declaration without a row
   fails, and so does a MAP row the shim no longer has (a PENDING row the shim lacks is
   reported as pending);
3. checks each row against objc2-core-ml's generated bindings: the class or protocol exists;
   the selector exists on it as an instance or class method as the shim says; a result and
   each parameter are `Option<...>` (nullable) exactly when the shim's are optional (`?`), and
   the parameter counts agree; the shim `throws` exactly when the
   selector reports an NSError (`error:` / `Result<..>`), and is `async` exactly when it takes a
   completion handler; a settable property has a setter; an enum case has the same raw value;
   a string constant exists;
4. checks availability: objc2-core-ml carries none, so shim_map.AVAIL records Apple's
   API_AVAILABLE of each Objective-C declaration (from the SDK headers, or the documentation
   where no header was at hand: each row says which). For each platform the shim names, its
   version must equal Apple's; a platform the package builds for (Package.swift's `platforms`)
   that the shim leaves out must be available at or below the package's floor.
   `--headers DIR` checks AVAIL itself against a real SDK's CoreML headers.

The bindings come from crates.io (scripts/swift/shim-check/Cargo.toml pins objc2-core-ml, and
`cargo metadata` downloads and finds its sources); no Apple SDK is needed. Exit status 1 on any
mismatch, naming the declaration and what differs.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shim_map import AVAIL, CM, MAP, PENDING, WRONG_NAMES, C, E, F, K, M, O, V  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SHIM_DIR = ROOT / "coreml-bridge/Sources/CoreMLShim"
PACKAGE = ROOT / "coreml-bridge/Package.swift"
PIN = ROOT / "scripts/swift/shim-check/Cargo.toml"
GUARD = "#if !canImport(CoreML)"
PLATFORMS = ("macOS", "iOS", "tvOS", "watchOS")
UNAVAILABLE = "unavailable"


# ---------------------------------------------------------------------------------------------
# Availability values

def parse_avail(spec: str | None) -> dict[str, str] | None:
    """`macOS 13.0, iOS 16.0, *` -> {"macOS": "13.0", "iOS": "16.0"}; None stays None."""
    if spec is None:
        return None
    out = {}
    for part in spec.split(","):
        words = part.split()
        if len(words) == 2 and words[0] in PLATFORMS:
            out[words[0]] = words[1]
    return out


def vtuple(v: str) -> tuple[int, ...]:
    """"13.0" -> (13, 0); "unavailable" sorts after every version."""
    return (10**6,) if v == UNAVAILABLE else tuple(int(x) for x in v.split("."))


def fmt_avail(a: dict[str, str] | None) -> str:
    if not a:
        return "none"
    return ", ".join(f"{p} {a[p]}" for p in PLATFORMS if p in a)


def package_floors(text: str) -> dict[str, str]:
    """Package.swift `platforms: [.macOS(.v13), .iOS(.v16)]` -> {"macOS": "13.0", "iOS": "16.0"}."""
    floors = {}
    for name, ver in re.findall(r"\.(macOS|iOS|tvOS|watchOS)\(\.v(\d+(?:_\d+)?)\)", text):
        v = ver.replace("_", ".")
        floors[name] = v if "." in v else v + ".0"
    return floors


def compare_avail(shim: dict[str, str] | None, sdk: dict[str, str], floors: dict[str, str]) -> str | None:
    shim = shim or {}
    diffs = []
    for p in PLATFORMS:
        s, a = shim.get(p), sdk.get(p)
        if s is not None and (a is None or vtuple(s) != vtuple(a)):
            diffs.append(f"{p} {s} in the shim, {p} {a or '(not recorded)'} in the SDK")
        elif s is None and p in floors and a == UNAVAILABLE:
            diffs.append(f"{p} is a platform of the package, but the SDK marks it unavailable")
        elif s is None and p in floors and a is not None and vtuple(a) > vtuple(floors[p]):
            diffs.append(f"no {p} in the shim's @available, but the SDK has {p} {a} "
                         f"(above the package's floor {p} {floors[p]})")
    return "; ".join(diffs) or None


# ---------------------------------------------------------------------------------------------
# The shim's declarations

@dataclass
class Decl:
    file: str
    line: int
    throws: bool = False
    is_async: bool = False
    settable: bool = False
    is_func: bool = False
    avail: dict[str, str] | None = None
    params: list[bool] | None = None  # a function's parameters: optional?

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


ATTR = r"(?:@\w+(?:\([^)]*\))?\s+)*"
DECL_TYPE = re.compile(rf"^\s*{ATTR}(?:public|open)\s+(?:final\s+)?(class|enum|struct|protocol)\s+(?!func\b|var\b)(\w+)")
EXTENSION = re.compile(rf"^\s*{ATTR}(?:public\s+)?extension\s+([\w.]+)")
PROTO_MEMBER = re.compile(r"^\s*(var|func)\s+(\w+)")
MEMBER = re.compile(rf"^\s*{ATTR}(?:public|open)\s+((?:(?:override|convenience|required|final|class|static|nonisolated)\s+)*)"
                    r"(var|let|func|init)\b\??\s*(\w*)")
CASE = re.compile(r"^\s*(?:@\w+(?:\([^)]*\))?\s+)*case\s+(\w+)(?:\s*=\s*(-?\d+)|\(([^)]*)\))?")
# Top-level C functions and constants (CoreVideo): `public func CVX(...)`, `public let kCVX: T = 0x..`.
TOP_FUNC = re.compile(rf"^\s*{ATTR}public\s+func\s+(\w+)\s*\(")
TOP_LET = re.compile(rf"^\s*{ATTR}public\s+let\s+(\w+)\s*:\s*\w+\s*=\s*(-?(?:0x[0-9A-Fa-f_]+|[0-9_]+))")
AVAILABLE = re.compile(r"@available\(([^)]*)\)")


def labels(params: str) -> str:
    """`(from input: X, at url: Y)` -> `from:at:`."""
    out = []
    depth, cur = 0, ""
    for ch in params:
        depth += ch in "([<"
        depth -= ch in ")]>"
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur)
    return "".join(p.strip().split(":")[0].split()[0] + ":" for p in out)


def shim_decls(text: str, fname: str = "CoreMLShim.swift") -> dict[str, Decl]:
    """Swift key -> Decl, for every declaration of one shim file."""
    keys: dict[str, Decl] = {}
    if GUARD not in text:
        raise ValueError(f"{fname}: a shim file must hold its declarations under `{GUARD}` "
                         "(on Apple platforms the real framework serves)")
    # (type name, brace depth at its body, kind, availability)
    stack: list[tuple[str, int, str, dict | None]] = []
    depth = 0
    body = text.split(GUARD, 1)[1]
    first_line = text[: text.index(GUARD)].count("\n") + 1
    raw = [line.split("//", 1)[0] for line in body.splitlines()]
    logical: list[tuple[int, int, str]] = []  # (line number, index of its last raw line, code)
    j = 0
    while j < len(raw):
        no, code = first_line + j, raw[j]
        while code.count("(") > code.count(")") and j + 1 < len(raw):
            j += 1
            code += " " + raw[j].strip()
        logical.append((no, j, code))
        j += 1
    pending_avail: dict | None = None
    for no, last, code in logical:
        owner = ".".join(s[0] for s in stack)
        kind = stack[-1][2] if stack else ""
        outer_avail = next((s[3] for s in reversed(stack) if s[3] is not None), None)
        inline = AVAILABLE.search(code)
        if code.strip().startswith("@available") and not re.sub(r"@available\([^)]*\)", "", code).strip():
            pending_avail = parse_avail(inline.group(1)) if "unavailable" not in inline.group(1) else None
            continue
        own = parse_avail(inline.group(1)) if inline else pending_avail
        avail = own if own is not None else outer_avail
        m, x = DECL_TYPE.match(code), EXTENSION.match(code)
        if not stack and TOP_FUNC.match(code):
            key, d = member("", "func", TOP_FUNC.match(code).group(1), code, raw, last)
            keys[key.lstrip(".")] = Decl(fname, no, d.throws, d.is_async, False, True, avail, d.params)
        elif not stack and TOP_LET.match(code):
            t = TOP_LET.match(code)
            keys[f"{t.group(1)}={int(t.group(2).replace('_', ''), 0)}"] = Decl(fname, no, avail=avail)
        elif m:
            name = f"{owner}.{m.group(2)}" if owner else m.group(2)
            keys[name] = Decl(fname, no, avail=avail)
            stack.append((m.group(2), depth + 1, m.group(1), avail))
        elif x:
            stack.append((x.group(1), depth + 1, "extension", own))
        elif stack and kind == "enum" and CASE.match(code):
            c = CASE.match(code)
            keys[f"{owner}.{c.group(1)}" + (f"={c.group(2)}" if c.group(2) else "")] = Decl(fname, no, avail=avail)
        elif stack and kind == "protocol" and PROTO_MEMBER.match(code):
            p = PROTO_MEMBER.match(code)
            key, d = member(owner, p.group(1), p.group(2), code, raw, last)
            keys[key] = Decl(fname, no, d.throws, d.is_async, d.settable, d.is_func, avail, d.params)
        elif stack and MEMBER.match(code) and "private" not in code.split("func")[0]:
            mm = MEMBER.match(code)
            if not (mm.group(2) == "init" and "override" in mm.group(1)):
                key, d = member(owner, mm.group(2), mm.group(3), code, raw, last)
                keys[key] = Decl(fname, no, d.throws, d.is_async, d.settable, d.is_func, avail, d.params)
        pending_avail = None
        depth += code.count("{") - code.count("}")
        while stack and depth < stack[-1][1]:
            stack.pop()
    return keys


def member(owner: str, kind: str, name: str, code: str, raw: list[str], last: int) -> tuple[str, Decl]:
    if kind in ("var", "let"):
        typ = code.split(":", 1)[1].split("{")[0].split("=")[0].strip()
        rest = code.split(":", 1)[1]
        if rest.rstrip().endswith("{"):  # a body on the following lines: read it to its end
            depth, k = 1, last + 1
            while depth > 0 and k < len(raw):
                rest += " " + raw[k]
                depth += raw[k].count("{") - raw[k].count("}")
                k += 1
        body = rest.split("{", 1)[1] if "{" in rest else ""
        settable = kind == "var" and ("{" not in rest or re.search(r"\bset\b", body) is not None)
        return f"{owner}.{name}" + ("?" if typ.endswith("?") else ""), Decl("", 0, settable=settable)
    params = code[code.index("(") + 1:]
    depth, end = 1, 0
    for i, ch in enumerate(params):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0:
            end = i
            break
    plist = params[:end]
    fname = "init" if kind == "init" else name
    key = f"{owner}.{fname}({labels(plist)})"
    rest = params[end + 1:].split("{")[0]
    effects = rest.split("->")[0]
    if kind == "func" and owner == "MLComputePlan" and fname == "deviceUsage":
        # Two overloads that differ only in the parameter's type: name it.
        key = f"{owner}.deviceUsage(for:{plist.split()[1].rstrip(':')})"
    if "->" in rest and rest.split("->", 1)[1].strip().endswith("?"):
        key += "?"
    throws = re.search(r"\bthrows\b", effects) is not None
    params = [p.split(":", 1)[1].split("=")[0].strip().endswith(("?", "!")) for p in split_top(plist, "([<") if ":" in p]
    return key, Decl("", 0, throws=throws, is_async=re.search(r"\basync\b", effects) is not None, is_func=True,
                     params=params)


def shim_files(shim_dir: Path) -> list[Path]:
    return sorted(shim_dir.glob("*.swift"))


def all_decls(files: list[Path]) -> tuple[dict[str, Decl], list[str]]:
    decls: dict[str, Decl] = {}
    problems = []
    for f in files:
        try:
            found = shim_decls(f.read_text(), f.name)
        except ValueError as e:
            problems.append(str(e))
            continue
        for key, d in found.items():
            if key in decls:
                problems.append(f"{d.where}: `{key}` is declared twice (also {decls[key].where})")
            decls[key] = d
    return decls, problems


# ---------------------------------------------------------------------------------------------
# objc2-core-ml's generated bindings

@dataclass
class Method:
    selector: str
    is_class: bool
    optional: bool
    errors: bool      # reports an NSError: `Result<..>` or an NSError in its completion handler
    handler: bool     # takes a completion handler
    params: list[bool]  # its parameters (no self, no error): optional?


@dataclass
class Index:
    classes: set[str] = field(default_factory=set)
    methods: dict[str, list[Method]] = field(default_factory=dict)
    enums: dict[tuple[str, str], int] = field(default_factory=dict)
    statics: set[str] = field(default_factory=set)
    functions: set[str] = field(default_factory=set)
    function_params: dict[str, int] = field(default_factory=dict)  # C function -> parameter count
    values: dict[str, int] = field(default_factory=dict)  # `pub const NAME: T = value;` (CoreVideo)
    types: set[str] = field(default_factory=set)
    conforms: set[tuple[str, str]] = field(default_factory=set)


def objc2_index(src: Path) -> Index:
    """Classes and protocols, selectors per class, enum values, string constants, C functions,
    type aliases and protocol conformances of the generated bindings."""
    idx = Index()
    files = sorted((src / "generated").glob("*.rs"))
    if not files:
        raise SystemExit(f"shim_check: no generated bindings under {src / 'generated'}")
    for f in files:
        text = f.read_text()
        idx.classes.update(re.findall(r"pub struct (\w+)(?:;|\(|\s*\{|<)", text))
        for name, value in re.findall(r"^pub const (\w+): \w+ = (-?(?:0x[0-9a-fA-F]+|\d+));", text, re.M):
            idx.values[name] = int(value, 0)
        for name, params in re.findall(r"pub (?:unsafe )?(?:extern \"C-unwind\" )?fn (\w+)\(([^)]*)\)", text):
            idx.function_params[name] = len([p for p in split_top(params, "(<") if ":" in p])
        idx.classes.update(re.findall(r"pub unsafe trait (\w+)", text))
        idx.statics.update(re.findall(r"pub static (\w+):", text))
        idx.functions.update(re.findall(r"pub (?:unsafe )?(?:extern \"C-unwind\" )?fn (\w+)\(", text))
        idx.types.update(re.findall(r"pub type (\w+) = ", text))
        idx.conforms.update((b, a) for a, b in re.findall(r"unsafe impl (\w+) for (\w+) \{\}", text))
        owner = None
        lines = text.splitlines()
        for i, line in enumerate(lines):
            m = re.match(r"^(?:impl|unsafe impl) (\w+) \{", line) or re.match(r"^\s*pub unsafe trait (\w+)", line)
            if m:
                owner = m.group(1)
            c = re.match(r"^\s*pub const (\w+): Self = Self\(([-0-9a-fx |]+)\);", line)
            if c and owner:
                value = 0
                for part in c.group(2).split("|"):
                    value |= int(part.strip(), 0)
                idx.enums[(owner, c.group(1))] = value
            s = re.match(r"^\s*#\[unsafe\(method\(([^)]*)\)\)\]", line)
            if s and owner:
                sig = ""
                for nxt in lines[i + 1:]:
                    if "fn " in nxt or sig:
                        sig += nxt.strip() + " "
                        if nxt.rstrip().endswith(";"):
                            break
                head, ret = split_sig(sig)
                is_class = "&self" not in head and "Allocated<Self>" not in head
                ret = ret.strip().rstrip(";").strip().removeprefix("->").strip()
                result = ret.startswith("Result<")
                ret = re.sub(r"^Result<(.*), Retained<NSError>>$", r"\1", ret)
                handler = "completionHandler:" in s.group(1) or "DynBlock" in head and s.group(1).endswith("Handler:")
                errors = result or (handler and "NSError" in head)
                idx.methods.setdefault(owner, []).append(
                    Method(s.group(1), is_class, ret.startswith("Option<"), errors, handler, rust_params(sig)))
    return idx


def split_sig(sig: str) -> tuple[str, str]:
    """`fn f(&self, h: &DynBlock<dyn Fn(*mut X)>) -> Z;` -> ("&self, h: ...", "-> Z;"): the
    parameter list found by matching parentheses (a block type holds its own)."""
    start = sig.index("(", sig.index("fn ")) + 1
    depth, end = 1, start
    for end in range(start, len(sig)):
        depth += sig[end] == "("
        depth -= sig[end] == ")"
        if depth == 0:
            break
    return sig[start:end], sig[end + 1:]


def rust_params(sig: str) -> list[bool]:
    """`fn f(&self, a: &X, b: Option<&Y>) -> Z;` -> [False, True]."""
    out = []
    for p in split_top(split_sig(sig)[0], "(<"):
        if ":" not in p or p.strip().startswith("this:"):
            continue
        out.append(p.split(":", 1)[1].strip().startswith("Option<"))
    return out


def sdk_methods(idx: Index, cls: str, sel: str) -> list[Method]:
    return [m for m in idx.methods.get(cls, []) if m.selector == sel]


def check_row(row: tuple, idx: Index) -> str | None:
    kind = row[0]
    if kind == C:
        return None if row[1] in idx.classes else f"no class or protocol `{row[1]}`"
    if kind in (M, CM):
        _, cls, sel, optional = row
        if cls not in idx.classes:
            return f"no class `{cls}`"
        found = sdk_methods(idx, cls, sel)
        if not found:
            return f"no selector `{sel}` on `{cls}`"
        want_class = kind == CM
        ok = [m for m in found if m.is_class == want_class]
        if not ok:
            return (f"`{sel}` on `{cls}` is {'an instance' if want_class else 'a class'} method, "
                    f"not {'a class' if want_class else 'an instance'} method")
        if optional is not None and not any(m.optional == optional for m in ok):
            return (f"`{cls} {sel}` returns {'non-' if optional else ''}optional in the SDK, "
                    f"the shim says {'optional' if optional else 'non-optional'}")
        return None
    if kind == E:
        _, typ, case, value = row
        got = idx.enums.get((typ, case))
        if got is None:
            return f"no case `{typ}::{case}`"
        return None if got == value else f"`{typ}::{case}` is {got} in the SDK, the shim says {value}"
    if kind == K:
        return None if row[1] in idx.statics else f"no constant `{row[1]}`"
    if kind == "type":
        return None if row[1] in idx.types or row[1] in idx.classes else f"no type `{row[1]}`"
    if kind == "conforms":
        return None if (row[1], row[2]) in idx.conforms else f"`{row[1]}` does not conform to `{row[2]}`"
    if kind == "function":
        return None if row[1] in idx.functions else f"no function `{row[1]}`"
    if kind == F:
        return None if row[1] in idx.functions else f"no C function `{row[1]}`"
    if kind == V:
        got = idx.values.get(row[1])
        if got is None:
            return f"no constant `{row[1]}`"
        return None if got == row[2] else f"`{row[1]}` is {got:#x} in the SDK, the shim says {row[2]:#x}"
    if kind == O:
        errs = [e for r in row[1] if (e := check_row(r, idx))]
        return "; ".join(errs) or None
    return f"unknown row kind {kind}"


def check_effects(key: str, row: tuple, d: Decl, idx: Index) -> str | None:
    """throws/async against `error:`/completion handler; a settable property's setter; a C
    function's parameter count."""
    if row[0] == F:
        want = idx.function_params.get(row[1])
        if want is not None and d.params is not None and len(d.params) != want:
            return f"the shim takes {len(d.params)} parameter(s), `{row[1]}` {want}"
        return None
    if row[0] not in (M, CM):
        return None
    _, cls, sel, _ = row
    found = [m for m in sdk_methods(idx, cls, sel) if m.is_class == (row[0] == CM)]
    if not found:
        return None  # check_row reports it
    m = found[0]
    errs = []
    if d.is_func or key.split(".")[-1].startswith("init("):
        wanted = m.params[:-1] if m.handler else m.params
        if d.params is not None and len(d.params) != len(wanted):
            errs.append(f"the shim takes {len(d.params)} parameter(s), `{sel}` {len(wanted)}"
                        + (" (besides its completion handler)" if m.handler else ""))
        elif d.params is not None:
            for i, (mine, theirs) in enumerate(zip(d.params, wanted)):
                if mine != theirs:
                    errs.append(f"parameter {i + 1} is {'' if mine else 'non-'}optional in the shim, "
                                f"{'' if theirs else 'non-'}optional (nullable) in `{sel}`")
        if d.throws != m.errors:
            errs.append(f"the shim {'throws' if d.throws else 'does not throw'}, but `{sel}` "
                        f"{'reports' if m.errors else 'reports no'} NSError "
                        f"(Swift imports it as {'throws' if m.errors else 'non-throwing'})")
        if d.is_async != m.handler:
            errs.append(f"the shim is {'' if d.is_async else 'not '}async, but `{sel}` "
                        f"{'takes' if m.handler else 'takes no'} completion handler")
    elif d.settable:
        setter = "set" + sel[0].upper() + sel[1:] + ":"
        if not sdk_methods(idx, cls, setter):
            errs.append(f"the shim's property is settable, but `{cls}` has no `{setter}` (read-only in the SDK)")
    return "; ".join(errs) or None


# ---------------------------------------------------------------------------------------------
# Availability of a row, from AVAIL

def row_avail(row: tuple) -> tuple[str | None, str | None]:
    """(AVAIL key whose value applies, the first key looked up) for a row; (None, None) when the
    row names no Objective-C declaration (Swift-only helpers)."""
    kind = row[0]
    if kind in (C, K, F, V, "type", "function"):
        return (row[1] if row[1] in AVAIL else None), row[1]
    if kind in (M, CM):
        own = f"{row[1]} {row[2]}"
        return (own if own in AVAIL else row[1] if row[1] in AVAIL else None), own
    if kind == E:
        own = f"{row[1]}.{row[2]}"
        return (own if own in AVAIL else row[1] if row[1] in AVAIL else None), own
    if kind == "conforms":
        return (row[1] if row[1] in AVAIL else None), row[1]
    if kind == O:
        # The declaration the overlay is built on: the last row (a conformance row comes first).
        return row_avail(row[1][-1]) if row[1] else (None, None)
    return None, None


def check_avail(row: tuple, d: Decl, floors: dict[str, str]) -> str | None:
    key, wanted = row_avail(row)
    if wanted is None:
        return None
    if key is None:
        return f"no availability recorded for `{wanted}` in shim_map.AVAIL (add Apple's API_AVAILABLE for it)"
    sdk = parse_avail(AVAIL[key][0])
    diff = compare_avail(d.avail, sdk, floors)
    return f"availability differs from Apple's `{key}` ({AVAIL[key][1]}): {diff}" if diff else None


# ---------------------------------------------------------------------------------------------
# The check

def run_check(decls: dict[str, Decl], idx: Index, floors: dict[str, str]) -> tuple[list[str], list[str], int]:
    """(problems, pending keys, declarations checked)."""
    problems = []
    for key, d in sorted(decls.items(), key=lambda kv: (kv[1].file, kv[1].line)):
        if key in WRONG_NAMES:
            problems.append(f"{d.where}: `{key}` is not Apple's Swift API: {WRONG_NAMES[key]}")
        elif key not in MAP and key not in PENDING:
            problems.append(f"{d.where}: `{key}` has no row in shim_map.py's MAP "
                            "(name its Objective-C declaration)")
    for key in MAP:
        if key not in decls:
            problems.append(f"MAP row `{key}` names no declaration of the shim (remove it, or fix the key)")
    pending = [k for k in PENDING if k not in decls]
    checked = 0
    for key, row in list(MAP.items()) + list(PENDING.items()):
        d = decls.get(key)
        err = check_row(row, idx)
        if d is None:
            if key in PENDING and err:
                problems.append(f"PENDING row `{key}`: {err}")
            if key in PENDING and row_avail(row)[1] and row_avail(row)[0] is None:
                problems.append(f"PENDING row `{key}`: no availability recorded for `{row_avail(row)[1]}` in AVAIL")
            continue
        checked += 1
        for e in (err, check_effects(key, row, d, idx), check_avail(row, d, floors)):
            if e:
                problems.append(f"{d.where}: `{key}`: {e}")
    return problems, pending, checked


def self_test(idx: Index, shim_dir: Path, floors: dict[str, str]) -> int:
    """Plants one mistake of each kind the check exists for; every one must be caught."""
    failures = []
    wrong_rows = {
        "optionality": (M, "MLFeatureDescription", "multiArrayConstraint", False),
        "instance vs class method": (CM, "MLModel", "predictionFromFeatures:error:_", False),
        "enum raw value": (E, "MLComputeUnits", "All", 3),
        "missing selector": (M, "MLModel", "predictionFromFeature:error:_", False),
        "missing class": (C, "MLModelX"),
        "missing constant": (K, "MLModelAuthorsKey"),
        "CoreVideo constant value": (V, "kCVPixelFormatType_32BGRA", 0x41524742),
        "missing C function": (F, "CVPixelBufferMake"),
    }
    failures += [what for what, row in wrong_rows.items() if check_row(row, idx) is None]
    files = {f.name: f.read_text() for f in shim_files(shim_dir)}
    main = "CoreMLShim.swift"
    v2 = f"{GUARD}\nimport Foundation\n"
    # (file, old, new, what must appear in a problem)
    planted = [
        (main, "case state = 8", "case state = 9", "has no row"),
        (main, "open var doubleValue: Double { 0 }",
         "open var doubleValue: Double { 0 }\n    open func madeUp(x: Int) -> Int { 0 }", "has no row"),
        (main, "open var multiArrayValue: MLMultiArray? { nil }",
         "open var multiArrayValue: MLMultiArray { fatalError() }", "has no row"),
        (main, "@available(macOS 14.4, iOS 17.4, tvOS 17.4, watchOS 10.4, *)\npublic final class MLComputePlan",
         "@available(macOS 14.0, iOS 17.4, tvOS 17.4, watchOS 10.4, *)\npublic final class MLComputePlan",
         "macOS 14.0 in the shim, macOS 14.4 in the SDK"),
        (main, "    @available(macOS 15.0, iOS 18.0, tvOS 18.0, watchOS 11.0, *)\n    case state = 8",
         "    case state = 8", "no macOS in the shim's @available"),
        (main, "open func prediction(from input: any MLFeatureProvider) throws -> any MLFeatureProvider",
         "open func prediction(from input: any MLFeatureProvider) -> any MLFeatureProvider", "does not throw"),
        (main, "open var modelDescription: MLModelDescription { MLModelDescription() }",
         "open var modelDescription: MLModelDescription = MLModelDescription()", "has no `setModelDescription:`"),
        (main, "#if !canImport(CoreML)", "#if os(Linux)", "must hold its declarations"),
        ("CoreMLShimImages.swift", "public let kCVPixelFormatType_32BGRA: OSType = 0x4247_5241",
         "public let kCVPixelFormatType_32BGRA: OSType = 0x4247_5242", "has no row"),
        ("CoreMLShimImages.swift", "_ pixelBufferOut: UnsafeMutablePointer<CVPixelBuffer?>) -> CVReturn {",
         "_ pixelBufferOut: UnsafeMutablePointer<CVPixelBuffer?>, _ extra: Int) -> CVReturn {", "has no row"),
        (main, "strides: [NSNumber], deallocator: ((UnsafeMutableRawPointer) -> Void)? = nil) throws {",
         "strides: [NSNumber], deallocator: @escaping (UnsafeMutableRawPointer) -> Void) throws {",
         "parameter 5 is non-optional in the shim"),
        (main, "public init(contentsOf url: URL, configuration: MLModelConfiguration) throws {",
         "public init(contentsOf url: URL?, configuration: MLModelConfiguration) throws {",
         "parameter 1 is optional in the shim"),
        (main, "@available(macOS 13.0, iOS 16.0, tvOS 16.0, *)\n    open class func compileModel",
         "@available(macOS 13.0, iOS 16.0, tvOS 16.0, watchOS 9.0, *)\n    open class func compileModel",
         "watchOS 9.0 in the shim, watchOS unavailable in the SDK"),
        ("CoreMLShimV2.swift", None, v2 + "extension MLModel {\n    public func newState() -> Int { 0 }\n}\n#endif\n",
         "not Apple's Swift API"),
        ("CoreMLShimV2.swift", None,
         v2 + "@available(macOS 15.0, iOS 18.0, tvOS 18.0, watchOS 11.0, *)\nextension MLModelConfiguration {\n"
         "    public var functionName: String? { get { nil } set {} }\n}\n"
         "extension MLFeatureValue {\n    public func madeUp() {}\n}\n#endif\n",
         "MLFeatureValue.madeUp()"),
        ("CoreMLShimV2.swift", None,
         v2 + "extension MLModelConfiguration {\n    public var functionName: String? { nil }\n}\n#endif\n",
         "MLModelConfiguration.functionName?`: availability differs"),
    ]
    baseline, base_problems = all_decls(shim_files(shim_dir))
    base_problems += run_check(baseline, idx, floors)[0]
    if base_problems:
        failures.append("the unedited shim does not pass: " + base_problems[0])
    with tempfile.TemporaryDirectory() as tmp:
        for fname, old, new, expect in planted:
            for f in Path(tmp).glob("*.swift"):
                f.unlink()
            for name, text in files.items():
                (Path(tmp) / name).write_text(text)
            target = Path(tmp) / fname
            if old is None:
                target.write_text(new)
            elif old not in files.get(fname, ""):
                failures.append(f"planted edit `{old[:40]}` no longer applies to {fname}")
                continue
            else:
                target.write_text(files[fname].replace(old, new, 1))
            decls, problems = all_decls(shim_files(Path(tmp)))
            problems += run_check(decls, idx, floors)[0]
            if not any(expect in p for p in problems):
                failures.append(f"edit `{new.strip()[:60]}` in {fname} went unnoticed (wanted `{expect}`)")
    for what, text, want in header_cases():
        got = header_avail_from_text(text)
        if got.get(what) != want:
            failures.append(f"--headers parser read `{what}` as {got.get(what)}, not {want}")
    for f in failures:
        print("  SELF-TEST FAIL " + f)
    n = len(wrong_rows) + len(planted) + len(header_cases())
    print(f"shim_check self-test: {n} planted mistakes, {'all caught' if not failures else str(len(failures)) + ' missed'}")
    return 1 if failures else 0


# ---------------------------------------------------------------------------------------------
# --headers: AVAIL against a real SDK's CoreML headers

API = re.compile(r"API_AVAILABLE\(([^;{}]*?\))\)")


def api_avail(text: str) -> dict[str, str] | None:
    m = API.search(text)
    if not m:
        return None
    names = {"macos": "macOS", "ios": "iOS", "tvos": "tvOS", "watchos": "watchOS"}
    out = {names[p]: v for p, v in re.findall(r"(macos|ios|tvos|watchos)\(([\d.]+)\)", m.group(1))}
    for u in re.findall(r"API_UNAVAILABLE\(([^)]*)\)", text) + re.findall(r"__(\w+?)_UNAVAILABLE\b", text):
        for p in re.findall(r"\w+", u.lower()):
            if p in names:
                out[names[p]] = UNAVAILABLE
    return out


def header_avail_from_text(text: str) -> dict[str, dict[str, str]]:
    """AVAIL-style key -> availability, for the declarations of one header's text."""
    out: dict[str, dict[str, str]] = {}
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = "\n".join(line.split("//", 1)[0] for line in text.splitlines())
    # NS_ENUMs: the type's availability follows its closing brace; a case's sits on the case.
    for m in re.finditer(r"typedef\s+NS_(?:ENUM|OPTIONS)\(\w+,\s*(\w+)\)\s*\{(.*?)\}([^;]*);", text, re.S):
        name, cases, tail = m.groups()
        # The type's API_AVAILABLE follows its closing brace, or precedes `typedef`.
        before = re.split(r"[;}]", text[: m.start()])[-1]
        if (a := api_avail(tail) or api_avail(before)) is not None:
            out[name] = a
        for case in split_top(cases):
            cm = re.match(r"\s*(\w+)", case)
            if cm and (a := api_avail(case)) is not None and cm.group(1).startswith(name):
                out[f"{name}.{cm.group(1)[len(name):]}"] = a
    # Statements: class/protocol/category openings carry the availability written before them;
    # members carry their own or inherit the enclosing one's.
    owner = None
    for stmt in re.split(r"(;|@end\b)", text):
        if stmt == "@end":
            owner = None
            continue
        if stmt == ";":
            continue
        im = re.search(r"@(interface|protocol)\s+(\w+)\s*(\([^)]*\))?", stmt)
        if im and not stmt[im.end():].strip():  # `@protocol MTLDevice;`: a forward declaration
            owner = None
            continue
        if im:
            before = stmt[: im.start()]
            a = api_avail(before) or api_avail(stmt[im.start(): im.start() + 200].split("\n", 1)[0])
            owner = im.group(2)
            if not im.group(3) and a is not None:  # the class itself, not a category
                out[owner] = a
            stmt = stmt[im.end():]
            stmt = re.sub(r"^\s*(?::\s*\w+)?\s*(<[^>]*>)?\s*(\{[^}]*\})?", "", stmt)
        if owner is None:
            for km in re.finditer(r"(?:ML|FOUNDATION)_EXPORT\s+[\w\s*<>,]*?\b(ML\w+)\s*(?:\(void\))?\s*(API_AVAILABLE\([^;]*\)\))",
                                  stmt):
                out[km.group(1)] = api_avail(km.group(2)) or {}
            continue
        s = stmt.strip()
        a = api_avail(s)
        if s.startswith("@property"):
            bare = re.sub(r"\b(?:API_|NS_|ML_|__)\w*\s*(?:\((?:[^()]|\([^()]*\))*\))?", "", s)
            bare = re.sub(r"^@property\s*(?:\([^)]*\))?", "", bare)
            names = re.findall(r"\w+", bare)
            if names and a is not None:
                out[f"{owner} {names[-1]}"] = a
        elif s.startswith(("-", "+")):
            sel_parts = re.findall(r"(\w+)\s*:\s*\([^)]*(?:\([^)]*\)[^)]*)*\)\s*\w+", s)
            if sel_parts:
                sel = "".join(p + ":" for p in sel_parts)
            else:
                nm = re.match(r"[-+]\s*\([^)]*\)\s*(\w+)", s)
                sel = nm.group(1) if nm else ""
            if sel and a is not None:
                out[f"{owner} {sel}"] = a
    return out


def split_top(text: str, opening: str = "(") -> list[str]:
    """Splits at commas outside brackets (an API_AVAILABLE(...) or a generic type holds commas)."""
    closing = {"(": ")", "[": "]", "<": ">"}
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in opening
        depth -= ch in "".join(closing[o] for o in opening)
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return parts + [cur]


def header_cases() -> list[tuple[str, str, dict[str, str]]]:
    """Small headers written in Apple's style, for the --headers parser's self-test."""
    cls = ("API_AVAILABLE(macos(15.0), ios(18.0), watchos(11.0), tvos(18.0))\nML_EXPORT\n"
           "@interface MLThing : NSObject\n"
           "- (nullable id<MLFeatureProvider>)predictionFromFeatures:(id<MLFeatureProvider>)inputFeatures\n"
           "        usingState:(MLState *)state\n        error:(NSError * __autoreleasing *)error\n"
           "    NS_SWIFT_NAME(prediction(from:using:))\n    API_AVAILABLE(macos(15.1), ios(18.1), watchos(11.1), tvos(18.1));\n"
           "@property (readonly, nullable, copy) NSString *label API_AVAILABLE(macos(13.0), ios(16.0));\n@end\n")
    enum = ("typedef NS_ENUM(NSInteger, MLKind) {\n    MLKindA = 0,\n"
            "    MLKindB API_AVAILABLE(macos(12.0), ios(16.0), watchos(9.0), tvos(16.0)) = 1,\n"
            "} API_AVAILABLE(macos(10.13), ios(11.0), watchos(4.0), tvos(11.0));\n")
    compile = ("@interface MLThing (MLModelCompilation)\n+ (void)compileModelAtURL:(NSURL *)modelURL\n"
               "        completionHandler:(void (^)(NSURL * _Nullable compiledModelURL, NSError * _Nullable error))handler\n"
               "        API_AVAILABLE(macos(13.0), ios(16.0), tvos(16.0)) API_UNAVAILABLE(watchos)\n"
               "        NS_REFINED_FOR_SWIFT NS_SWIFT_ASYNC_NAME(compileModel(at:));\n@end\n")
    return [
        ("MLThing", cls, {"macOS": "15.0", "iOS": "18.0", "watchOS": "11.0", "tvOS": "18.0"}),
        ("MLThing predictionFromFeatures:usingState:error:", cls,
         {"macOS": "15.1", "iOS": "18.1", "watchOS": "11.1", "tvOS": "18.1"}),
        ("MLThing label", cls, {"macOS": "13.0", "iOS": "16.0"}),
        ("MLKind", enum, {"macOS": "10.13", "iOS": "11.0", "watchOS": "4.0", "tvOS": "11.0"}),
        ("MLKind.B", enum, {"macOS": "12.0", "iOS": "16.0", "watchOS": "9.0", "tvOS": "16.0"}),
        ("MLShape", "API_AVAILABLE(macos(10.14), ios(12.0), watchos(5.0), tvos(12.0))\n"
                    "typedef NS_ENUM(NSInteger, MLShape) {\n    MLShapeA = 1, // a comment, with a comma\n};\n",
         {"macOS": "10.14", "iOS": "12.0", "watchOS": "5.0", "tvOS": "12.0"}),
        ("MLThingKey", "typedef NSString * MLKey NS_STRING_ENUM;\nFOUNDATION_EXPORT MLKey const MLThingKey "
                       "API_AVAILABLE(macos(10.13), ios(11.0), watchos(4.0), tvos(11.0));\n",
         {"macOS": "10.13", "iOS": "11.0", "watchOS": "4.0", "tvOS": "11.0"}),
        ("MLThing compileModelAtURL:completionHandler:", compile,
         {"macOS": "13.0", "iOS": "16.0", "tvOS": "16.0", "watchOS": UNAVAILABLE}),
    ]


def check_headers(hdir: Path) -> int:
    found: dict[str, dict[str, str]] = {}
    for h in sorted(hdir.glob("*.h")):
        found.update(header_avail_from_text(h.read_text(errors="replace")))
    bad, unseen = 0, []
    for key, (spec, source) in AVAIL.items():
        hkey = key.replace(":_", ":")
        if hkey not in found:
            unseen.append(key)
            continue
        want = parse_avail(spec)
        got = found[hkey]
        if {p: vtuple(v) for p, v in want.items()} != {p: vtuple(v) for p, v in got.items() if p in PLATFORMS}:
            bad += 1
            print(f"  FAIL AVAIL `{key}` ({source}): {spec}; the header says {fmt_avail(got)}")
    print(f"shim_check --headers: {len(AVAIL) - len(unseen)} of {len(AVAIL)} AVAIL rows found in {hdir}, "
          f"{bad} differ")
    for key in unseen:
        print(f"  not found in the headers (not compared): {key}")
    return 1 if bad else 0


# ---------------------------------------------------------------------------------------------

def objc2_sources() -> dict[str, Path]:
    """src/ of objc2-core-ml and of the crates its image API needs (CoreVideo, CoreFoundation)."""
    out = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--manifest-path", str(PIN)],
        check=True, capture_output=True, text=True,
    ).stdout
    want = ("objc2-core-ml", "objc2-core-video", "objc2-core-foundation")
    found = {p["name"]: Path(p["manifest_path"]).parent / "src" for p in json.loads(out)["packages"]
             if p["name"] in want}
    for name in want:
        if name not in found:
            raise SystemExit(f"shim_check: {name} not found in cargo metadata")
    return found


def merged_index(srcs: list[Path]) -> Index:
    """One index over several crates' generated bindings."""
    idx = Index()
    for src in srcs:
        part = objc2_index(src)
        idx.classes |= part.classes
        for k, v in part.methods.items():
            idx.methods.setdefault(k, []).extend(v)
        idx.enums.update(part.enums)
        idx.statics |= part.statics
        idx.functions |= part.functions
        idx.function_params.update(part.function_params)
        idx.values.update(part.values)
        idx.types |= part.types
        idx.conforms |= part.conforms
    return idx


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--objc2", type=Path, help="objc2-core-ml's src/ (default: from cargo metadata)")
    ap.add_argument("--shim-dir", type=Path, default=SHIM_DIR)
    ap.add_argument("--self-test", action="store_true", help="check that the checker catches planted mistakes")
    ap.add_argument("--headers", type=Path, help="check AVAIL against this CoreML.framework/Headers directory")
    args = ap.parse_args()
    if args.headers:
        return check_headers(args.headers)
    floors = package_floors(PACKAGE.read_text())
    srcs = objc2_sources()
    src = args.objc2 or srcs["objc2-core-ml"]
    idx = merged_index([src, srcs["objc2-core-video"], srcs["objc2-core-foundation"]])
    if args.self_test:
        return self_test(idx, args.shim_dir, floors)
    files = shim_files(args.shim_dir)
    decls, problems = all_decls(files)
    more, pending, checked = run_check(decls, idx, floors)
    problems += more
    print(f"shim_check: {len(decls)} declarations in {len(files)} shim file(s) "
          f"({', '.join(f.name for f in files)}); {checked} checked against objc2-core-ml "
          f"({len(idx.classes)} classes/protocols, {sum(len(v) for v in idx.methods.values())} selectors "
          f"in {src.parent.name}) and availability (package floors: {fmt_avail(floors)})")
    if pending:
        print(f"shim_check: {len(pending)} pending row(s), checked against objc2 but not yet in the shim: "
              + ", ".join(pending))
    for p in problems:
        print("  FAIL " + p)
    print(f"shim_check: {'FAILED, ' + str(len(problems)) + ' problem(s)' if problems else 'ok'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
