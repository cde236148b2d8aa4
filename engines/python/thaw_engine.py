"""thaw's Python engine: CPython (through componentize-py) with this bootstrap, serving any
function deployed as source. One engine serves every Python function of a host; a function is
only its source.

- `prepare` runs once, at deploy, in a validation instance: it compiles every file, so that a
  syntax error is refused with its place (`file:line:column`), and returns the compiled code
  objects (marshal, the format of this engine's CPython: the program is only ever loaded by
  the engine that prepared it) as the program, so an instance does not compile again.
- `load` runs once per instance, before its first request: it imports the entry module (and
  what that imports, from the deployed files, through a finder over them) and finds `handle`.
- Requests go to `handle(request) -> Response` through thaw_http, as in the template.

The helper modules (thaw, thaw_http) and the standard library are part of the engine; a
deployed package holds pure Python only.
"""

import base64
import importlib
import importlib.abc
import importlib.util
import json
import marshal
import random
import sys
import traceback

import thaw  # noqa: F401  (imported now so that it is part of the engine's snapshot)
from componentize_py_types import Err
from thaw_http import serve
from wit_world import exports

_handler = None
_files = {}
# The state of `random` when a snapshot's run started (see `snapshot_start`); None otherwise.
_random_at_start = None


def _module_name(path: str) -> str:
    name = path[: -len(".py")].replace("/", ".")
    return name[: -len(".__init__")] if name.endswith(".__init__") else name


class _SourceFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds modules and packages among the deployed files."""

    def find_spec(self, fullname, path=None, target=None):
        base = fullname.replace(".", "/")
        for candidate, package in ((f"{base}/__init__.py", True), (f"{base}.py", False)):
            if candidate in _files:
                spec = importlib.util.spec_from_loader(
                    fullname, self, origin=candidate, is_package=package
                )
                spec.has_location = True
                return spec
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        path = module.__spec__.origin
        module.__file__ = path
        exec(marshal.loads(base64.b64decode(_files[path])), module.__dict__)


def _user_traceback(error: BaseException) -> str:
    """The traceback with only the deployed files' frames (the engine's own are noise)."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename in _files]
    lines = traceback.format_list(frames)
    lines += traceback.format_exception_only(type(error), error)
    return "Traceback (most recent call last):\n" + "".join(lines).rstrip()


class Program(exports.Program):
    def prepare(self, files, entry):
        code = {}
        for path, text in files:
            if not path.endswith(".py"):
                continue
            # A module's path is its import name: every part must be an identifier.
            if not all(part.isidentifier() for part in path[: -len(".py")].split("/")):
                raise Err(f"{path}: not importable as a module (each part of a Python module's path must be an identifier)")
            try:
                compiled = compile(text, path, "exec")
            except SyntaxError as e:
                raise Err(f"{path}:{e.lineno or 1}:{e.offset or 1}: SyntaxError: {e.msg}")
            code[path] = base64.b64encode(marshal.dumps(compiled)).decode("ascii")
        return json.dumps({"entry": entry, "files": code})

    def snapshot_start(self):
        # componentize-py's first entry (just before this) seeded `random` from the host;
        # remember its state, so that `load` can refuse a program whose top level draws from
        # it: frozen into the snapshot, every instance would draw the same values.
        global _random_at_start
        _random_at_start = random.getstate()

    def load(self, program):
        global _handler, _files
        data = json.loads(program)
        _files = data["files"]
        finder = _SourceFinder()
        sys.meta_path.insert(0, finder)
        entry = data["entry"]
        try:
            # The entry by its file, whatever sys.modules holds under its name already.
            name = _module_name(entry)
            spec = finder.find_spec(name)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
        except BaseException as e:  # a syntax error, a missing module, a raise at the top
            raise Err(_user_traceback(e))
        if _random_at_start is not None and random.getstate() != _random_at_start:
            raise Err(
                f"{entry}: the program draws from `random` while it loads, which a snapshot "
                "would freeze for every instance"
            )
        handle = getattr(module, "handle", None)
        if not callable(handle):
            raise Err(
                f"{entry} has no handler: define `def handle(request): return Response(body=b\"hi\")`"
                " (from thaw_http import Response)"
            )
        _handler = handle


_reseed = True


def _dispatch(request):
    # An exception here is printed with its traceback (thaw logs has it) and traps the
    # instance: the client gets a 500, and the instance is not used again.
    global _reseed
    if _reseed:
        # componentize-py's runtime seeds `random` on an instance's first entry, but an
        # instance of a function's snapshot (runtime/src/source/snapshot.rs) had its first
        # entry when the snapshot was taken: its seed is the snapshot's. Every instance of a
        # snapshot (the only place `snapshot_start` ran, setting `_random_at_start`) draws its
        # own here, on its first request (this flag is never cleared before one). An
        # instance of the engine itself was seeded by that first entry moments ago.
        _reseed = False
        if _random_at_start is not None:
            random.seed()
    if _handler is None:
        raise RuntimeError("no program loaded")
    return _handler(request)


IncomingHandler = serve(_dispatch)
