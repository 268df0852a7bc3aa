"""Put the grading kernel back the way it started, just before each graded cell runs.

Student cells run in the same Python process as the graded cells that check them, so a cell could
change the machinery a graded cell goes through before any line of it runs: an IPython input or AST
transformer that rewrites the graded cell, an `__import__` or import finder that hands it fake
modules, an event callback, a replaced `sys.stdout`, a patched shell or kernel method, a trace
function, a thread that keeps patching. The grader (`grading/executor.py`) therefore sends the kernel
a `course_reset_request` message before every graded cell. This module's handler, installed when
the grading kernel starts (`grading/sandbox.py`, before any notebook cell), answers it outside of
`run_cell` (so no transformer sees it) by restoring what it recorded at start-up:

- the callables and classes of the interpreter's, IPython's, the kernel's and the tested libraries'
  modules (builtins, importlib, torch, numpy, ...), and the methods of their classes; callables a
  notebook added over inherited ones are removed;
- `sys.modules` entries that existed at start-up (a fake `torch` or `part_tests` is dropped, and so is
  a later library module made up in the notebook, even with a borrowed `__spec__`);
- the shell's transformer lists, event callbacks, custom exception handler, display and output
  objects, the kernel's message handlers; `sys` hooks (stdout/stderr, displayhook, excepthook,
  meta_path, path_hooks, sys.path, trace, profile, monitoring tools, gc callbacks; the import system's
  cache of path finders is emptied) and the notebook's
  `__builtins__`;
- threads started from notebook code, or running code compiled from a string, are stopped (a
  `SystemExit` is raised in them).

It replies with the request's token and the names it put back. The state lives in the handler's
closure, not in a module, so code that edits this module's globals changes nothing. Code written
to defeat this handler in particular can still do so; such code touches what the grader's
`tamper_report.csv` lists.
"""

from __future__ import annotations

from grading import COURSE_PACKAGES

MESSAGE = "course_reset_request"
REPLY = "course_reset_reply"

# Modules whose functions and classes the graded cells run through: the interpreter, IPython and the
# kernel, and the libraries the tests compute with. Prefixes match submodules ("torch" covers torch.nn).
_WATCHED = ("builtins", "sys", "importlib", "inspect", "functools", "types", "math", "re", "json", "hashlib",
            "warnings", "contextlib", "traceback", "io", "threading", "copy", "operator", "itertools", "collections",
            "IPython", "ipykernel", "jupyter_client", "traitlets", "comm", "numpy", "torch", "sklearn",
            "transformers", "tokenizers", "jaxtyping", *COURSE_PACKAGES)
# Modules that may appear after start-up: one without a module spec under these names is a fake.
_NO_FAKES = ("torch", "numpy", "transformers", "sklearn", "tokenizers", "jaxtyping", *COURSE_PACKAGES,
             "safetensors", "huggingface_hub", "IPython", "ipykernel", "importlib", "builtins", "sys", "math", "re",
             "json", "inspect", "functools", "hashlib")
# The core the tests compute and report with: any change there is put back. Elsewhere (and for the
# names in _VOLATILE, which libraries and the kernel legitimately rebind while running) only code
# that comes from the notebook is put back.
_STRICT = ("builtins", "sys", "importlib", "math", "re", "json", "numpy", "torch", "sklearn.decomposition",
           "IPython.core.interactiveshell", "ipykernel", *COURSE_PACKAGES)
_VOLATILE = ("torch.manual_seed", "CacheInfo.pgo_artifacts", "CacheInfo.precompile_artifacts", "OutStream.write",
             "ZMQInteractiveShell.sys_excepthook", "sys.excepthook", "sys.displayhook", "sys.last_type",
             "sys.last_value", "sys.last_traceback", "sys.last_exc")
# Shell attributes that hold state (not methods) the graded cell depends on.
_SHELL_STATE = ("input_transformers_cleanup", "input_transformers_post", "ast_transformers",
                "input_transformer_manager", "events", "custom_exceptions", "CustomTB", "compile", "displayhook",
                "display_pub", "display_trap", "InteractiveTB", "SyntaxTB", "builtin_trap", "hooks", "kernel",
                "history_manager")


def install() -> bool:
    """Record the kernel's state now and register the reset handler; False outside an ipykernel."""
    import builtins
    import ctypes
    import gc
    import sys
    import threading
    import types

    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    kernel = getattr(shell, "kernel", None)
    if kernel is None or not hasattr(kernel, "shell_handlers"):
        return False

    # Everything the handler calls is bound here, so patching a builtin later cannot reach it.
    _vars, _id, _isinstance, _callable, _getattr, _setattr, _delattr = vars, id, isinstance, callable, getattr, setattr, delattr
    _list, _dict, _tuple, _sorted, _len, _str, _type, _hasattr = list, dict, tuple, sorted, len, str, type, hasattr
    _ModuleType, _FunctionType, _MethodType = types.ModuleType, types.FunctionType, types.MethodType
    _descriptors = (property, classmethod, staticmethod, types.FunctionType, types.BuiltinFunctionType,
                    types.MethodDescriptorType, types.WrapperDescriptorType, types.GetSetDescriptorType,
                    types.MemberDescriptorType, types.ClassMethodDescriptorType)
    _thread_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
    _c_ulong, _py_object = ctypes.c_ulong, ctypes.py_object
    _settrace, _setprofile = sys.settrace, sys.setprofile
    _t_settrace, _t_setprofile, _enumerate, _current = threading.settrace, threading.setprofile, threading.enumerate, threading.current_thread
    _monitoring = getattr(sys, "monitoring", None)
    _course_packages = COURSE_PACKAGES
    from grading.watch import notebook_file as _notebook_file
    _current_frames = sys._current_frames

    def runs_made_up_code(frame) -> bool:
        """Whether a thread's stack runs code compiled from a string (a thread started on exec, say)."""
        depth = 0
        while frame is not None and depth < 200:
            name = frame.f_code.co_filename
            if (name.startswith("<") and not name.startswith("<frozen")) or "/ipykernel_" in name:
                return True
            frame, depth = frame.f_back, depth + 1
        return False

    stdlib = _getattr(sys, "stdlib_module_names", frozenset())

    def watched(name: str) -> bool:
        # the standard library too (pathlib, os, typing, ...): a graded cell runs through it before its tests do
        return any(name == p or name.startswith(p + ".") for p in _WATCHED) or name.split(".")[0] in stdlib

    def from_notebook(obj) -> bool:
        code = _getattr(obj, "__code__", None) or _getattr(_getattr(obj, "__func__", None), "__code__", None)
        if code is None:
            code = _getattr(_getattr(_type(obj), "__call__", None), "__code__", None)
        if code is None:
            return False
        return _notebook_file(code.co_filename)

    def origin(obj, depth: int = 0):
        """The module a callable, descriptor, class or instance comes from (through wrappers)."""
        if depth > 4 or obj is None:
            return None
        for inner in ("__func__", "fget", "func", "__wrapped__"):
            wrapped = _getattr(obj, inner, None)
            if wrapped is not None and wrapped is not obj:
                found = origin(wrapped, depth + 1)
                if found is not None:
                    return found
        if _isinstance(obj, _type):
            return _getattr(obj, "__module__", None)
        module = _getattr(obj, "__module__", None)
        if _isinstance(module, _str):
            return module
        return _getattr(_type(obj), "__module__", None)

    def suspicious(obj) -> bool:
        """Code from the notebook: a function compiled from a cell, or anything defined in __main__."""
        if from_notebook(obj):
            return True
        for inner in ("__func__", "fget", "fset", "func", "__wrapped__"):
            wrapped = _getattr(obj, inner, None)
            if wrapped is not None and wrapped is not obj and from_notebook(wrapped):
                return True
        return origin(obj) == "__main__" or _getattr(_type(obj), "__module__", None) == "__main__"

    def made_up(module) -> bool:
        """A module object made or dressed up in the notebook (with a borrowed __spec__, say)."""
        if suspicious(_type(module)):
            return True
        try:
            values = _list(_vars(module).values())
        except TypeError:
            return False
        for value in values:
            try:
                if _isinstance(value, (_FunctionType, _type)) and suspicious(value):
                    return True
            except Exception:  # a library's placeholder that raises on any attribute (transformers' dummies)
                continue
        return False

    def strict(module_name: str) -> bool:
        return any(module_name == p or module_name.startswith(p + ".") for p in _STRICT)

    def keep(value) -> bool:  # what a namespace snapshot restores: code, not data
        return _callable(value) or _isinstance(value, _descriptors) or _isinstance(value, _ModuleType)

    modules = _dict(sys.modules)
    namespaces: dict = {}  # id -> (object, {name: value})
    classes: dict = {}

    def record_class(cls) -> None:
        if _id(cls) in classes or cls is object or cls is _type:
            return
        classes[_id(cls)] = (cls, {k: v for k, v in _vars(cls).items() if keep(v)}, strict(_getattr(cls, "__module__", "") or ""))

    for name, module in modules.items():
        if not watched(name) or not _isinstance(module, _ModuleType):
            continue
        try:
            items = _dict(_vars(module))
        except TypeError:
            continue
        saved = {k: v for k, v in items.items() if keep(v)}
        if name == "builtins":  # as between cells: without what IPython's builtin trap adds while a cell runs
            trap = shell.builtin_trap
            if _getattr(trap, "_nested_level", 0) > 0:
                for key, original in trap._orig_builtins.items():
                    if keep(original):
                        saved[key] = original
                    else:
                        saved.pop(key, None)
        namespaces[_id(module)] = (module, saved, strict(name))
        for value in items.values():
            if _isinstance(value, _type) and watched(_getattr(value, "__module__", "") or ""):
                for base in value.__mro__:
                    record_class(base)
    for obj in (shell, kernel, sys.stdout, sys.stderr):
        for base in _type(obj).__mro__:
            record_class(base)

    def instance_state(obj):
        return obj, _dict(_vars(obj))

    instances = [instance_state(o) for o in (shell, kernel, sys.stdout, sys.stderr)]
    shell_state = {k: _getattr(shell, k) for k in _SHELL_STATE if _hasattr(shell, k)}
    shell_lists = {k: _list(_getattr(shell, k)) for k in ("input_transformers_cleanup", "input_transformers_post",
                                                          "ast_transformers") if _hasattr(shell, k)}
    manager = shell.input_transformer_manager
    manager_lists = {k: _list(v) for k, v in _vars(manager).items() if _isinstance(v, _list)}
    events = shell.events
    callbacks = {k: _list(v) for k, v in events.callbacks.items()}
    handlers = _dict(kernel.shell_handlers)
    sys_hooks = {k: _getattr(sys, k) for k in ("stdout", "stderr", "__stdout__", "__stderr__", "displayhook",
                                               "excepthook", "breakpointhook", "unraisablehook") if _hasattr(sys, k)}
    if _getattr(shell.display_trap, "is_active", False):  # as between cells
        sys_hooks["displayhook"] = shell.display_trap.old_hook
    meta_path, path_hooks = _list(sys.meta_path), _list(sys.path_hooks)
    path_list, path = sys.path, _list(sys.path)  # the submission's folder is last (grading/sandbox.py)
    meta_list, hooks_list, importer_cache = sys.meta_path, sys.path_hooks, sys.path_importer_cache
    cached_finders = _dict(importer_cache)
    from importlib.machinery import FileFinder as _FileFinder
    gc_callbacks = _list(gc.callbacks)
    user_builtins = shell.user_ns.get("__builtins__", builtins)
    threads = {_id(t) for t in _enumerate()}
    tools = {i: _monitoring.get_tool(i) for i in range(6)} if _monitoring else {}

    def must_restore(label: str, current, strict_here: bool) -> bool:
        if strict_here and label not in _VOLATILE:
            return True
        return current is not None and suspicious(current)

    def restore_namespace(target, saved: dict, put_back: list, label: str, cls: bool, strict_here: bool) -> None:
        current = _vars(target)
        for attr, value in saved.items():
            now = current.get(attr, None)
            if now is not value and must_restore(f"{label}.{attr}", now, strict_here):
                try:
                    (_type.__setattr__ if cls else _setattr)(target, attr, value)
                    put_back.append(f"{label}.{attr}")
                except (AttributeError, TypeError):
                    pass
        for attr in [a for a, v in _list(current.items()) if a not in saved and keep(v) and suspicious(v)]:
            try:
                (_type.__delattr__ if cls else _delattr)(target, attr)
                put_back.append(f"{label}.{attr}")
            except (AttributeError, TypeError):
                pass

    def reset() -> list:
        put_back: list = []
        _settrace(None)
        _setprofile(None)
        _t_settrace(None)
        _t_setprofile(None)
        if _monitoring:
            for tool_id, owner in tools.items():
                if _monitoring.get_tool(tool_id) != owner:
                    try:
                        _monitoring.set_events(tool_id, 0)
                        _monitoring.free_tool_id(tool_id)
                    except ValueError:
                        pass
                    put_back.append(f"sys.monitoring tool {tool_id}")
        for name, module in modules.items():
            if name.split(".")[0] in _course_packages:
                continue  # every graded cell imports these afresh; fakes of them are dropped below
            if sys.modules.get(name) is not module:
                sys.modules[name] = module
                put_back.append(f"sys.modules[{name!r}]")
        for name in [n for n, m in _list(sys.modules.items()) if n not in modules
                     and any(n == p or n.startswith(p + ".") for p in _NO_FAKES)
                     and (_getattr(m, "__spec__", None) is None or made_up(m))]:
            sys.modules.pop(name, None)
            put_back.append(f"sys.modules[{name!r}]")
        for module, saved, strict_here in namespaces.values():
            restore_namespace(module, saved, put_back, module.__name__, False, strict_here)
        for cls, saved, strict_here in classes.values():
            restore_namespace(cls, saved, put_back, _getattr(cls, "__qualname__", "?"), True, strict_here)
        for obj, saved in instances:
            current = _vars(obj)
            label = _type(obj).__name__
            for attr, value in saved.items():
                now = current.get(attr, None)
                if (keep(value) or attr in _SHELL_STATE) and now is not value and must_restore(f"{label}.{attr}", now, True):
                    current[attr] = value
                    put_back.append(f"{label}.{attr}")
            for attr in [a for a, v in _list(current.items()) if a not in saved and _callable(v) and _hasattr(_type(obj), a)
                         and must_restore(f"{label}.{a}", v, True)]:
                del current[attr]
                put_back.append(f"{label}.{attr}")
        for attr, value in shell_state.items():
            if _getattr(shell, attr, None) is not value:
                try:
                    _setattr(shell, attr, value)
                    put_back.append(f"shell.{attr}")
                except Exception:
                    pass
        for attr, contents in shell_lists.items():
            lst = _getattr(shell, attr)
            if _len(lst) != _len(contents) or any(a is not b for a, b in zip(lst, contents)):
                lst[:] = contents
                put_back.append(f"shell.{attr}")
        for attr, contents in manager_lists.items():
            lst = _getattr(manager, attr)
            if _len(lst) != _len(contents) or any(a is not b for a, b in zip(lst, contents)):
                lst[:] = contents
                put_back.append(f"input_transformer_manager.{attr}")
        for event in _list(events.callbacks):
            if event not in callbacks:
                del events.callbacks[event]
                put_back.append(f"events[{event!r}]")
        for event, contents in callbacks.items():  # a library's callback (matplotlib's, say) stays
            lst = events.callbacks.setdefault(event, [])
            kept = [c for c in contents] + [c for c in lst if not any(c is d for d in contents) and not suspicious(c)]
            if _len(lst) != _len(kept) or any(a is not b for a, b in zip(lst, kept)):
                lst[:] = kept
                put_back.append(f"events[{event!r}]")
        for msg_type in [m for m in kernel.shell_handlers if m not in handlers]:
            del kernel.shell_handlers[msg_type]
            put_back.append(f"shell_handlers[{msg_type!r}]")
        for msg_type, handler in handlers.items():
            if kernel.shell_handlers.get(msg_type) is not handler:
                kernel.shell_handlers[msg_type] = handler
                put_back.append(f"shell_handlers[{msg_type!r}]")
        for attr, value in sys_hooks.items():
            now = _getattr(sys, attr, None)
            if now is not value and must_restore(f"sys.{attr}", now, True):
                _setattr(sys, attr, value)
                put_back.append(f"sys.{attr}")
        for attr, original in (("meta_path", meta_list), ("path_hooks", hooks_list), ("path_importer_cache", importer_cache)):
            if _getattr(sys, attr) is not original:  # replaced by an object of the notebook's making
                _setattr(sys, attr, original)
                put_back.append(f"sys.{attr}")
        # A finder cached for a folder on sys.path (or for a package's folder) would hand the graded cell
        # fake modules: the cache is emptied (the import system makes its finders again on demand).
        if any(not (f is None or cached_finders.get(k) is f or (_type(f) is _FileFinder and f.path == k))
               for k, f in _list(importer_cache.items())):
            put_back.append("sys.path_importer_cache")
        importer_cache.clear()
        for attr, contents in (("meta_path", meta_path), ("path_hooks", path_hooks)):  # a library's finder stays
            lst = _getattr(sys, attr)
            contents = [c for c in contents] + [c for c in lst if not any(c is d for d in contents) and not suspicious(c)]
            if _len(lst) != _len(contents) or any(a is not b for a, b in zip(lst, contents)):
                lst[:] = contents
                if attr == "path_hooks":
                    sys.path_importer_cache.clear()
                put_back.append(f"sys.{attr}")
        if sys.path is not path_list or _len(sys.path) != _len(path) or any(a is not b for a, b in zip(sys.path, path)):
            # a folder put ahead of the course's would shadow its packages
            path_list[:] = path
            sys.path = path_list
            sys.path_importer_cache.clear()
            put_back.append("sys.path")
        for cb in _list(gc.callbacks):  # hypothesis's GC timer (the tests' property inputs) is a library's, kept
            if str(getattr(cb, "__module__", "") or "").startswith("hypothesis.") and not any(cb is r for r in gc_callbacks):
                gc_callbacks.append(cb)
        if _len(gc.callbacks) != _len(gc_callbacks) or any(a is not b for a, b in zip(gc.callbacks, gc_callbacks)):
            gc.callbacks[:] = gc_callbacks
            put_back.append("gc.callbacks")
        if shell.user_ns.get("__builtins__") is not user_builtins:
            shell.user_ns["__builtins__"] = user_builtins
            put_back.append("__builtins__")
        me = _current()
        frames = _current_frames()
        started = [t for t in _enumerate() if _id(t) not in threads and t is not me and
                   (from_notebook(_getattr(t, "_target", None)) or from_notebook(_getattr(_type(t), "run", None))
                    or runs_made_up_code(frames.get(t.ident)))]
        for thread in started:
            _thread_exc(_c_ulong(thread.ident), _py_object(SystemExit))
            put_back.append(f"thread {thread.name!r} stopped")
        for thread in started:
            thread.join(1.0)
            if thread.is_alive():  # it swallowed the SystemExit: it could undo all of the above at any time
                raise RuntimeError(f"a thread started by the notebook ({thread.name!r}) kept running after it was "
                                   "told to stop")
        return put_back

    def handle(stream, ident, parent):
        content = parent.get("content", {}) if _isinstance(parent, _dict) else {}
        try:
            restored = reset()
            reply = {"status": "ok", "token": content.get("token"), "restored": _sorted(set(restored))}
        except Exception as err:  # the grader treats anything but "ok" as a failed reset
            reply = {"status": "error", "token": content.get("token"), "error": f"{_type(err).__name__}: {err}"}
        kernel.session.send(stream, REPLY, reply, parent, ident=ident)

    kernel.shell_handlers[MESSAGE] = handle
    handlers[MESSAGE] = handle
    return True
