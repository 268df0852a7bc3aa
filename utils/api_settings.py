"""Where the API client's settings come from: the environment, a git-ignored ``.env``, the key.

The endpoint, the models and the name of the variable that holds the key are read from the
environment (``PERSONA_COURSE_API_BASE``, ``PERSONA_COURSE_GEN_MODEL``, ... : the table in
:mod:`utils.api`), after the ``.env`` file at the repository root, if present, without overriding
variables already set (:func:`load_dotenv`, a small parser with no dependency). The key itself is
never part of :class:`Settings`: :func:`resolve_key` reads it when a call needs it, :class:`Secret`
holds it with a ``repr`` that does not show it, and :func:`scrub` removes it (and anything
key-shaped) from any text.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .caching import REPO_ROOT

__all__ = [
    "MissingAPIKeyError",
    "Secret",
    "Settings",
    "get_settings",
    "key_available",
    "load_dotenv",
    "resolve_key",
    "scrub",
]

log = logging.getLogger(__name__)

DEFAULT_API_BASE = "https://openrouter.ai/api/v1"
DEFAULT_KEY_ENV = "OPENROUTER_API_KEY"
FALLBACK_KEY_ENV = "OPENAI_API_KEY"
DEFAULT_GEN_MODEL = "google/gemma-2-27b-it"
DEFAULT_JUDGE_MODEL = "openai/gpt-4.1-mini"


class MissingAPIKeyError(RuntimeError):
    """No API key was found in the environment (nor in ``.env``)."""


# --------------------------------------------------------------------------
# settings
# --------------------------------------------------------------------------
_DOTENV_LOADED = False
_DOTENV_LOCK = threading.Lock()
_DOTENV_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")


def load_dotenv(path: str | os.PathLike | None = None, override: bool = False) -> dict[str, str]:
    """Load ``KEY=VALUE`` lines from a ``.env`` file into ``os.environ``.

    A small parser (no dependency): blank lines and ``#`` comments are skipped,
    ``export`` is allowed, values may be single- or double-quoted, and an
    unquoted value ends at `` #``. Variables already set are kept unless
    ``override``. Returns what the file defined. A missing file is not an error.
    """
    path = Path(path) if path is not None else REPO_ROOT / ".env"
    found: dict[str, str] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (FileNotFoundError, IsADirectoryError):
        return found
    except (OSError, UnicodeDecodeError) as e:
        log.warning("could not read %s (%s)", path, type(e).__name__)
        return found
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = _DOTENV_LINE.match(line)
        if not m:
            continue
        name, value = m.group(1), m.group(2)
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        else:
            value = re.split(r"\s+#", value, maxsplit=1)[0].strip()
        found[name] = value
        if override or name not in os.environ:
            os.environ[name] = value
    return found


def _ensure_dotenv() -> None:
    global _DOTENV_LOADED
    with _DOTENV_LOCK:
        if not _DOTENV_LOADED:
            _DOTENV_LOADED = True
            load_dotenv()


@dataclass(frozen=True)
class Settings:
    """Endpoint settings read from the environment (never the key itself)."""

    api_base: str
    key_env: str
    gen_model: str
    judge_model: str
    judge_api_base: str
    judge_key_env: str
    judge_logprobs: bool | None
    max_workers: int
    deadline: float | None = None


def _env(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


def _env_bool(name: str) -> bool | None:
    value = os.environ.get(name, "").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    return None


def get_settings() -> Settings:
    """Current settings (environment + ``.env``)."""
    _ensure_dotenv()
    api_base = _env("PERSONA_COURSE_API_BASE", DEFAULT_API_BASE)
    key_env = _env("PERSONA_COURSE_API_KEY_ENV", DEFAULT_KEY_ENV)
    try:
        max_workers = max(1, int(_env("PERSONA_COURSE_MAX_WORKERS", "8")))
    except ValueError:
        max_workers = 8
    try:
        deadline: float | None = float(_env("PERSONA_COURSE_API_DEADLINE", "0")) or None
    except ValueError:
        deadline = None
    if deadline is not None and not (deadline > 0 and deadline < float("inf")):
        deadline = None
    return Settings(
        api_base=api_base,
        key_env=key_env,
        gen_model=_env("PERSONA_COURSE_GEN_MODEL", DEFAULT_GEN_MODEL),
        judge_model=_env("PERSONA_COURSE_JUDGE_MODEL", DEFAULT_JUDGE_MODEL),
        judge_api_base=_env("PERSONA_COURSE_JUDGE_API_BASE", api_base),
        judge_key_env=_env("PERSONA_COURSE_JUDGE_API_KEY_ENV", key_env),
        judge_logprobs=_env_bool("PERSONA_COURSE_JUDGE_LOGPROBS"),
        max_workers=max_workers,
        deadline=deadline,
    )


def resolve_key(key_env: str) -> str:
    """The API key held by the variable `key_env` (or the fallback OPENAI_API_KEY); raises
    MissingAPIKeyError, saying what to set, when neither holds one."""
    _ensure_dotenv()
    for name in dict.fromkeys([key_env, FALLBACK_KEY_ENV]):
        value = os.environ.get(name, "").strip()
        if value:
            return value
    raise MissingAPIKeyError(
        f"No API key found: set the environment variable {key_env} "
        f"(or {FALLBACK_KEY_ENV}), e.g. in a .env file at the repository root "
        f"({REPO_ROOT / '.env'}), which is gitignored. To read the key from another "
        "variable, set PERSONA_COURSE_API_KEY_ENV to its name. For a local vLLM server "
        "started without --api-key any non-empty value works (e.g. OPENAI_API_KEY=EMPTY). "
        "In the offline worlds (PERSONA_COURSE_MODEL=toy or tiny) no key is needed.")


def key_available(key_env: str | None = None) -> bool:
    """Whether a key can be found (without raising)."""
    try:
        resolve_key(key_env or get_settings().key_env)
        return True
    except MissingAPIKeyError:
        return False


# --------------------------------------------------------------------------
# secrets
# --------------------------------------------------------------------------
_SECRET_PATTERNS = [
    re.compile(r"(?i)(bearer\s+)[^\s'\"]+"),
    re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}"),
]


def scrub(text: Any, *secrets: str | None) -> str:
    """``str(text)`` with the given secrets and anything key-shaped replaced by ``***``."""
    out = str(text)
    for s in secrets:
        if s and len(s) >= 4:  # shorter "keys" (e.g. a dummy "k") would mangle every message
            out = out.replace(s, "***")
    out = _SECRET_PATTERNS[0].sub(r"\1***", out)
    out = _SECRET_PATTERNS[1].sub("sk-***", out)
    return out


class Secret:
    """Holds the key; its repr never shows it."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<secret>"

    __str__ = __repr__
